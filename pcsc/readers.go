package pcsc

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// Filter selects readers by name. A reader is used when it matches at least
// one Include pattern (or Include is empty) and no Exclude pattern.
//
// A pattern is a glob as in path.Match ("*" matches any run of characters
// except '/', "?" one character, "[...]" a class), matched against the
// whole reader name; "Virtual PCD*" matches every vpcd slot. A pattern
// written between slashes, "/.../", is a Go regexp (RE2 syntax) that may
// match anywhere in the name; anchor it with ^ and $ to match the whole
// name: "/^ACS ACR39U/" or "/(?i)yubikey/".
type Filter struct {
	Include []string
	Exclude []string
}

// matcher is a compiled Filter.
type matcher struct {
	include, exclude []func(string) bool
}

func (f Filter) compile() (*matcher, error) {
	var m matcher
	var err error
	if m.include, err = compilePatterns(f.Include); err != nil {
		return nil, fmt.Errorf("reader include pattern: %w", err)
	}
	if m.exclude, err = compilePatterns(f.Exclude); err != nil {
		return nil, fmt.Errorf("reader exclude pattern: %w", err)
	}
	return &m, nil
}

func compilePatterns(pats []string) ([]func(string) bool, error) {
	var out []func(string) bool
	for _, p := range pats {
		if len(p) >= 2 && strings.HasPrefix(p, "/") && strings.HasSuffix(p, "/") {
			re, err := regexp.Compile(p[1 : len(p)-1])
			if err != nil {
				return nil, fmt.Errorf("%q: %w", p, err)
			}
			out = append(out, re.MatchString)
			continue
		}
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("%q: %w", p, err)
		}
		out = append(out, func(name string) bool {
			ok, _ := path.Match(p, name)
			return ok
		})
	}
	return out, nil
}

// Match reports whether the filter selects reader; a filter with a bad
// pattern selects nothing.
func (f Filter) Match(reader string) bool {
	m, err := f.compile()
	return err == nil && m.match(reader)
}

// Why says why the filter leaves reader out: `excluded by reader exclude
// pattern "X"`, "matches no reader include pattern", or "" when the
// filter selects it. A filter with a bad pattern leaves every reader out
// with the error as the reason. Other backends (the CCID driver's
// ReaderFilter) use it so that the same patterns select readers alike.
func (f Filter) Why(reader string) string {
	m, err := f.compile()
	if err != nil {
		return err.Error()
	}
	if m.match(reader) {
		return ""
	}
	for i, ex := range m.exclude {
		if ex(reader) {
			return fmt.Sprintf("excluded by reader exclude pattern %q", f.Exclude[i])
		}
	}
	return "matches no reader include pattern"
}

// Validate reports the first bad pattern, if any.
func (f Filter) Validate() error {
	_, err := f.compile()
	return err
}

func (m *matcher) match(reader string) bool {
	if reader == pnpReader {
		return false
	}
	ok := len(m.include) == 0
	for _, in := range m.include {
		if in(reader) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	for _, ex := range m.exclude {
		if ex(reader) {
			return false
		}
	}
	return true
}

// Readers lists the readers pcscd knows that f selects. No readers is an
// empty list, not an error; pcscd not running is an error wrapping
// ErrServiceUnavailable.
func Readers(ctx context.Context, f Filter) ([]string, error) {
	return listReaders(ctx, realSystem, f)
}

func listReaders(ctx context.Context, sys system, f Filter) ([]string, error) {
	m, err := f.compile()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing readers: %w", err)
	}
	sctx, err := sys.EstablishContext()
	if err != nil {
		return nil, wrapErr("SCardEstablishContext", "", err)
	}
	defer sctx.Release()
	return readersOf(sctx, m)
}

// readersOf lists the readers m selects over an established context.
func readersOf(sctx scardContext, m *matcher) ([]string, error) {
	all, err := sctx.ListReaders()
	if isCode(err, CodeNoReadersAvailable) {
		return []string{}, nil
	}
	if err != nil {
		return nil, wrapErr("SCardListReaders", "", err)
	}
	out := []string{}
	for _, r := range all {
		if m.match(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Snapshot returns the current state of every reader f selects, one
// ReaderEvent per reader (never Gone), without watching. It is what a
// one-off listing such as `wsrc-agent readers` needs.
func Snapshot(ctx context.Context, f Filter) ([]ReaderEvent, error) {
	return snapshot(ctx, realSystem, f)
}

func snapshot(ctx context.Context, sys system, f Filter) ([]ReaderEvent, error) {
	m, err := f.compile()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reading reader states: %w", err)
	}
	sctx, err := sys.EstablishContext()
	if err != nil {
		return nil, wrapErr("SCardEstablishContext", "", err)
	}
	defer sctx.Release()
	readers, err := readersOf(sctx, m)
	if err != nil || len(readers) == 0 {
		return []ReaderEvent{}, err
	}
	states := make([]readerState, len(readers))
	for i, r := range readers {
		states[i] = readerState{Reader: r, Current: stateUnaware}
	}
	if err := sctx.GetStatusChange(states, 0); err != nil {
		return nil, wrapErr("SCardGetStatusChange", "", err)
	}
	out := make([]ReaderEvent, 0, len(states))
	for _, st := range states {
		if st.Event&stateUnknown != 0 {
			continue // vanished since the listing
		}
		ev := ReaderEvent{Reader: st.Reader, CardPresent: st.Event&statePresent != 0}
		ev.Mute = ev.CardPresent && st.Event&stateMute != 0
		if ev.CardPresent && !ev.Mute {
			ev.ATR = bytes.Clone(st.ATR)
		}
		out = append(out, ev)
	}
	return out, nil
}
