// Package config reads the programs' configuration files (TOML) and lets
// environment variables stand in for command-line flags, with errors that
// say where the mistake is: file, line and key.
//
// Place in the data flow: a cmd/ binary parses its flags, calls
// FlagsFromEnv, Loads its file into a struct of its own (toml tags), and
// validates the result, reporting each problem with File.Errorf so that
// `check-config` and the start-up log point at the line to fix. The
// precedence is: built-in defaults, then the file, then the environment,
// then the command line.
//
// Decoding is github.com/BurntSushi/toml (syntax and type errors carry
// its line numbers; keys the struct does not have are errors here, since
// a misspelt setting that silently does nothing is worse than a refusal
// to start). That package does not expose where a key is, so File keeps
// its own index of key lines (index.go), built by a small scanner over
// the text once the decoder has accepted it.
package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is one problem in a configuration file.
type Error struct {
	File string // as given to Load
	Line int    // 1-based; 0 when unknown
	Key  string // e.g. "tls.cert_file", "user[1].cards[0].iccid"; "" when none
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors is a list of problems, in line order. As an error it reads one
// problem per line.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns es as an error, nil when empty, sorted by line.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	sort.SliceStable(es, func(i, j int) bool { return es[i].Line < es[j].Line })
	return es
}

// File is a decoded configuration file.
type File struct {
	Path string
	md   toml.MetaData
	idx  keyIndex
}

// Load reads the file at path into v, a pointer to a struct with toml
// tags. The error is an Errors (syntax, types, unknown keys, each with
// its line) or a read error.
func Load(path string, v any) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Decode(path, data, v)
}

// Decode is Load for data read already; name is the file name for errors.
func Decode(name string, data []byte, v any) (*File, error) {
	f := &File{Path: name}
	md, err := toml.Decode(string(data), v)
	if err != nil {
		return nil, Errors{f.decodeError(err)}
	}
	f.md = md
	f.idx = buildIndex(string(data))
	var errs Errors
	seen := map[string]bool{}
	for _, k := range md.Undecoded() {
		key := keyString(k)
		if seen[key] {
			continue // once per element of an array of tables
		}
		seen[key] = true
		lines := f.idx.all[stripIndexes(key)]
		if len(lines) == 0 {
			lines = []int{0}
		}
		for _, l := range lines {
			errs = append(errs, &Error{File: name, Line: l, Key: key, Err: errors.New("unknown setting (misspelt?)")})
		}
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// typeErrRE matches BurntSushi/toml's unstructured decoding errors, which
// carry the line in their text only ("toml: line 3 (last key "a.b"):
// incompatible types: ..."). The version is pinned in go.mod, and
// TestTypeErrorLine fails if the format changes.
var typeErrRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "((?:[^"\\]|\\.)*)"\): (.*)$`)

func (f *File) decodeError(err error) *Error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: f.Path, Line: pe.Position.Line, Key: pe.LastKey, Err: errors.New(pe.Message)}
	}
	if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, uerr := strconv.Unquote(`"` + m[2] + `"`)
		if uerr != nil {
			key = m[2]
		}
		return &Error{File: f.Path, Line: line, Key: key, Err: errors.New(m[3])}
	}
	return &Error{File: f.Path, Err: errors.New(strings.TrimPrefix(err.Error(), "toml: "))}
}

// Errorf returns an *Error about key ("tls.cert_file",
// "user[1].password_hash"), with the line where key is set, or else where
// its nearest enclosing table or array element starts.
func (f *File) Errorf(key string, format string, args ...any) *Error {
	return &Error{File: f.Path, Line: f.Line(key), Key: key, Err: fmt.Errorf(format, args...)}
}

// Line returns the line of key (see Errorf), 0 when it is not in the
// file at all.
func (f *File) Line(key string) int {
	for k := key; k != ""; k = parentKey(k) {
		if l, ok := f.idx.first[k]; ok {
			return l
		}
	}
	return 0
}

// IsDefined reports whether the file sets key (dotted, without array
// indexes: "tls.acme.email").
func (f *File) IsDefined(key string) bool {
	if f == nil {
		return false
	}
	return f.md.IsDefined(strings.Split(key, ".")...)
}

// keyString renders a decoder key the way the index does.
func keyString(k toml.Key) string {
	parts := make([]string, len(k))
	for i, p := range k {
		parts[i] = quoteKey(p)
	}
	return strings.Join(parts, ".")
}

// parentKey strips the last component of key: "a.b[2].c" → "a.b[2]" →
// "a.b" → "a" → "".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i > 0 {
			return key[:i]
		}
	}
	if i := lastDot(key); i >= 0 {
		return key[:i]
	}
	return ""
}

// lastDot is the index of the last '.' outside quotes, -1 if none.
func lastDot(key string) int {
	inQuote, last := false, -1
	for i := 0; i < len(key); i++ {
		switch key[i] {
		case '"':
			inQuote = !inQuote
		case '\\':
			if inQuote {
				i++
			}
		case '.':
			if !inQuote {
				last = i
			}
		}
	}
	return last
}

// stripIndexes removes array indexes: "user[1].cards[0]" → "user.cards".
func stripIndexes(key string) string {
	var b strings.Builder
	inQuote, depth := false, 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '"' && depth == 0:
			inQuote = !inQuote
		case c == '\\' && inQuote && i+1 < len(key):
			b.WriteByte(c)
			i++
			c = key[i]
		case c == '[' && !inQuote:
			depth++
			continue
		case c == ']' && !inQuote && depth > 0:
			depth--
			continue
		}
		if depth == 0 {
			b.WriteByte(c)
		}
	}
	return b.String()
}
