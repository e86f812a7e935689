package qemuvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// ErrExited: the VM's console ended (QEMU exited) before the awaited
// event appeared.
var ErrExited = errors.New("qemuvm: VM exited")

// Console collects the guest's serial console and the vmscript events in
// it. Its reader goroutine is owned by the VM; the methods are safe for
// concurrent use.
type Console struct {
	mu      sync.Mutex       // guards the fields below
	lines   []string         // every console line, in order
	events  []vmscript.Event // the marker lines among them
	changed chan struct{}    // closed and replaced on every new line
	ended   bool             // the console reached EOF
}

func newConsole() *Console { return &Console{changed: make(chan struct{})} }

// read consumes r until EOF, calling echo for each line (may be nil).
func (c *Console) read(r io.Reader, echo func(string)) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			line = strings.TrimRight(line, "\r\n")
			if echo != nil {
				echo(line)
			}
			c.mu.Lock()
			c.lines = append(c.lines, line)
			if e, ok := vmscript.ParseEvent(line); ok {
				c.events = append(c.events, e)
			}
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.ended = true
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
	}
}

// Lines returns a copy of the console so far.
func (c *Console) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Events returns a copy of the events so far.
func (c *Console) Events() []vmscript.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]vmscript.Event(nil), c.events...)
}

// Await waits for the first event (since boot) that match accepts. It
// fails with ErrExited when the console ends first, and with the fail
// event's text when the guest script failed first.
func (c *Console) Await(ctx context.Context, match func(vmscript.Event) bool) (vmscript.Event, error) {
	for {
		c.mu.Lock()
		for _, e := range c.events {
			if match(e) {
				c.mu.Unlock()
				return e, nil
			}
			if e.Kind == vmscript.KindFail {
				c.mu.Unlock()
				return vmscript.Event{}, fmt.Errorf("qemuvm: guest script failed at line %s: %s", e.Name, e.Text)
			}
		}
		ended, changed := c.ended, c.changed
		c.mu.Unlock()
		if ended {
			return vmscript.Event{}, ErrExited
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return vmscript.Event{}, fmt.Errorf("qemuvm: waiting for a console event: %w", ctx.Err())
		}
	}
}

// AwaitMark waits for "@@vm mark text".
func (c *Console) AwaitMark(ctx context.Context, text string) error {
	_, err := c.Await(ctx, func(e vmscript.Event) bool { return e.Kind == vmscript.KindMark && e.Text == text })
	return err
}

// AwaitExit waits until the process name (a run or until step) has
// finished and returns its exit text ("0" on success) and output lines.
func (c *Console) AwaitExit(ctx context.Context, name string) (exit string, output []string, err error) {
	e, err := c.Await(ctx, func(e vmscript.Event) bool { return e.Kind == vmscript.KindExit && e.Name == name })
	if err != nil {
		return "", nil, fmt.Errorf("awaiting %s: %w", name, err)
	}
	return e.Text, c.Output(name), nil
}

// Output returns the output lines of the process name so far.
func (c *Console) Output(name string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		if e.Kind == vmscript.KindOut && e.Name == name {
			out = append(out, e.Text)
		}
	}
	return out
}

// AwaitOutput waits for an output line of the process name that match
// accepts and returns it.
func (c *Console) AwaitOutput(ctx context.Context, name string, match func(line string) bool) (string, error) {
	e, err := c.Await(ctx, func(e vmscript.Event) bool {
		return e.Kind == vmscript.KindOut && e.Name == name && match(e.Text)
	})
	if err != nil {
		return "", fmt.Errorf("awaiting output of %s: %w", name, err)
	}
	return e.Text, nil
}
