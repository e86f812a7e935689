package config

import (
	"strconv"
	"strings"
)

// keyIndex says on which line each key of a TOML document is set.
type keyIndex struct {
	// first maps a key with array indexes ("user[1].cards[0].iccid") to
	// the line where it (or, for arrays and tables, its start) is.
	first map[string]int
	// all maps a key without indexes ("user.cards.iccid") to every line
	// that sets it, in order.
	all map[string][]int
}

// buildIndex scans a TOML document. It is meant for documents the
// decoder has accepted; on anything else it returns a partial index, but
// it never fails, panics or loops (FuzzIndex).
func buildIndex(src string) keyIndex {
	s := &scanner{src: src, line: 1, idx: keyIndex{first: map[string]int{}, all: map[string][]int{}}, arrays: map[string]int{}}
	s.document()
	return s.idx
}

type scanner struct {
	src    string
	pos    int
	line   int
	idx    keyIndex
	arrays map[string]int // array-of-tables path → tables seen so far
	table  string         // the current table's path
}

func (s *scanner) record(key string, line int) {
	if key == "" {
		return
	}
	if _, ok := s.idx.first[key]; !ok {
		s.idx.first[key] = line
	}
	k := stripIndexes(key)
	s.idx.all[k] = append(s.idx.all[k], line)
}

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *scanner) advance() {
	if s.src[s.pos] == '\n' {
		s.line++
	}
	s.pos++
}

// skipSpace skips blanks, and with newlines also line breaks and comments.
func (s *scanner) skipSpace(newlines bool) {
	for !s.eof() {
		switch c := s.peek(); {
		case c == ' ' || c == '\t' || c == '\r':
			s.advance()
		case c == '#':
			for !s.eof() && s.peek() != '\n' {
				s.advance()
			}
		case c == '\n' && newlines:
			s.advance()
		default:
			return
		}
	}
}

// skipLine skips to the start of the next line.
func (s *scanner) skipLine() {
	for !s.eof() && s.peek() != '\n' {
		s.advance()
	}
	if !s.eof() {
		s.advance()
	}
}

func (s *scanner) document() {
	for {
		s.skipSpace(true)
		if s.eof() {
			return
		}
		start := s.pos
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.table)
		}
		if s.pos == start { // garbage: give up on this line
			s.skipLine()
		}
	}
}

// header reads [table] or [[array.of.tables]].
func (s *scanner) header() {
	line := s.line
	s.advance()
	isArray := s.peek() == '['
	if isArray {
		s.advance()
	}
	parts := s.key()
	if len(parts) == 0 {
		s.skipLine()
		return
	}
	path := ""
	for i, p := range parts {
		path = join(path, p)
		if n, ok := s.arrays[path]; ok && (i < len(parts)-1 || !isArray) && n > 0 {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	if isArray {
		n := s.arrays[path]
		s.arrays[path] = n + 1
		s.record(path, line)
		path += "[" + strconv.Itoa(n) + "]"
	}
	s.record(path, line)
	s.table = path
	s.skipLine()
}

// keyValue reads key = value inside table.
func (s *scanner) keyValue(table string) {
	line := s.line
	parts := s.key()
	if len(parts) == 0 {
		return
	}
	s.skipSpace(false)
	if s.peek() != '=' {
		return
	}
	s.advance()
	s.skipSpace(false)
	path := table
	for _, p := range parts {
		path = join(path, p)
	}
	s.record(path, line)
	s.value(path)
}

// key reads a dotted key, bare or quoted parts.
func (s *scanner) key() []string {
	var parts []string
	for {
		s.skipSpace(false)
		var p string
		switch c := s.peek(); {
		case c == '"' || c == '\'':
			p = s.str()
		case isBare(c):
			start := s.pos
			for !s.eof() && isBare(s.peek()) {
				s.advance()
			}
			p = s.src[start:s.pos]
		default:
			return parts
		}
		parts = append(parts, p)
		s.skipSpace(false)
		if s.peek() != '.' {
			return parts
		}
		s.advance()
	}
}

// value reads one value at path, recording array elements and
// inline-table keys.
func (s *scanner) value(path string) {
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.advance()
		for i := 0; ; i++ {
			s.skipSpace(true)
			if s.eof() || s.peek() == ']' {
				break
			}
			elem := path + "[" + strconv.Itoa(i) + "]"
			s.record(elem, s.line)
			start := s.pos
			s.value(elem)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.advance()
			} else if s.pos == start {
				return // not a value: give up
			}
		}
		if !s.eof() {
			s.advance()
		}
	case '{':
		s.advance()
		for {
			s.skipSpace(true)
			if s.eof() || s.peek() == '}' {
				break
			}
			start := s.pos
			s.keyValue(path)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.advance()
			} else if s.pos == start {
				return
			}
		}
		if !s.eof() {
			s.advance()
		}
	default: // number, boolean, date
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.peek())) {
			s.advance()
		}
	}
}

// str reads a string of any of the four kinds and returns its raw
// contents (escapes are kept; keys with escapes are rare).
func (s *scanner) str() string {
	q := s.peek()
	triple := strings.HasPrefix(s.src[s.pos:], strings.Repeat(string(q), 3))
	if triple {
		s.pos += 3
		start := s.pos
		for !s.eof() {
			if q == '"' && s.peek() == '\\' && s.pos+1 < len(s.src) {
				s.advance()
				s.advance()
				continue
			}
			if strings.HasPrefix(s.src[s.pos:], strings.Repeat(string(q), 3)) {
				end := s.pos
				s.pos += 3
				// Up to two more quotes may belong to the content.
				for i := 0; i < 2 && s.peek() == q; i++ {
					s.pos++
					end++
				}
				return s.src[start:end]
			}
			s.advance()
		}
		return s.src[start:]
	}
	s.advance()
	start := s.pos
	for !s.eof() && s.peek() != '\n' {
		c := s.peek()
		if c == '\\' && q == '"' && s.pos+1 < len(s.src) && s.src[s.pos+1] != '\n' {
			s.pos += 2
			continue
		}
		if c == q {
			v := s.src[start:s.pos]
			s.pos++
			return v
		}
		s.pos++
	}
	return s.src[start:s.pos]
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// quoteKey renders one key part: bare when it can be, else quoted.
func quoteKey(p string) string {
	if p == "" {
		return `""`
	}
	for i := 0; i < len(p); i++ {
		if !isBare(p[i]) {
			return strconv.Quote(p)
		}
	}
	return p
}

func join(path, part string) string {
	if path == "" {
		return quoteKey(part)
	}
	return path + "." + quoteKey(part)
}
