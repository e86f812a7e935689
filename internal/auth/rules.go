package auth

import (
	"errors"
	"fmt"
	"strings"
)

// Card is what access rules look at: the card's agent (the authenticated
// agent name, else the name from its hello), its reader, and the
// identities known so far ("" while unknown). ICCID without its f
// padding, hex in any case.
type Card struct {
	Agent, Reader   string
	ATR, ICCID, EID string
}

// Rule selects cards by glob patterns on their attributes; an empty
// pattern does not restrict that attribute, and a card matches when every
// non-empty pattern matches. Patterns: `*` any run of characters
// (including none), `?` exactly one, `\` makes the next character
// literal; case does not matter.
type Rule struct {
	Agent, Reader   string
	ATR, ICCID, EID string
}

// MaxPatternLen bounds one pattern.
const MaxPatternLen = 256

// Validate reports a rule that cannot be used: one without any pattern
// (it would match every card: say so with all_cards instead), or a bad
// pattern.
func (r Rule) Validate() error {
	if r == (Rule{}) {
		return errors.New("rule has no pattern (to allow every card, use all_cards = true)")
	}
	for _, f := range r.fields(Card{}) {
		if err := ValidPattern(f.pattern); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

type ruleField struct{ name, pattern, value string }

func (r Rule) fields(c Card) [5]ruleField {
	return [5]ruleField{
		{"agent", r.Agent, c.Agent},
		{"reader", r.Reader, c.Reader},
		{"atr", r.ATR, c.ATR},
		{"iccid", r.ICCID, c.ICCID},
		{"eid", r.EID, c.EID},
	}
}

// Match reports whether c matches every pattern of r.
func (r Rule) Match(c Card) bool {
	for _, f := range r.fields(c) {
		if f.pattern != "" && !Glob(f.pattern, f.value) {
			return false
		}
	}
	return true
}

// Rules is a list of rules; a card matches when any rule does. An empty
// list matches nothing.
type Rules []Rule

// Match reports whether any rule matches c.
func (rs Rules) Match(c Card) bool {
	for _, r := range rs {
		if r.Match(c) {
			return true
		}
	}
	return false
}

// ValidPattern reports a pattern that is too long, not UTF-8, holds
// control characters or ends in a lone backslash. The empty pattern is
// valid (it does not restrict).
func ValidPattern(p string) error {
	switch {
	case len(p) > MaxPatternLen:
		return fmt.Errorf("pattern longer than %d bytes", MaxPatternLen)
	case !printable(p):
		return errors.New("pattern is not printable UTF-8")
	case trailingBackslashes(p)%2 == 1:
		return errors.New(`pattern ends in a lone \`)
	}
	return nil
}

func trailingBackslashes(p string) int {
	n := 0
	for i := len(p) - 1; i >= 0 && p[i] == '\\'; i-- {
		n++
	}
	return n
}

// Glob reports whether s matches pattern (see Rule), ignoring case. It
// runs in O(len(pattern)·len(s)) at worst, without recursion.
func Glob(pattern, s string) bool {
	p := []rune(strings.ToLower(pattern))
	t := []rune(strings.ToLower(s))
	// Classic wildcard matching with one backtrack point: the last *.
	pi, ti := 0, 0
	starP, starT := -1, 0
	for ti < len(t) {
		if pi < len(p) {
			c := p[pi]
			switch {
			case c == '*':
				starP, starT = pi, ti
				pi++
				continue
			case c == '?':
				pi++
				ti++
				continue
			case c == '\\' && pi+1 < len(p):
				if p[pi+1] == t[ti] {
					pi += 2
					ti++
					continue
				}
			case c == t[ti]:
				pi++
				ti++
				continue
			}
		}
		if starP < 0 {
			return false
		}
		// Let the last * swallow one more character.
		starT++
		pi, ti = starP+1, starT
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
