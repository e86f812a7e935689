package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/card"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger discards logs unless WSRC_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("WSRC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fastTiming reconnects quickly for tests against a real socket.
var fastTiming = Timing{
	MinBackoff:  time.Millisecond,
	MaxBackoff:  20 * time.Millisecond,
	CloseWait:   100 * time.Millisecond,
	StableAfter: time.Hour,
}

// fakeCard is a card.Card whose answers a test scripts.
type fakeCard struct {
	atr []byte

	mu       sync.Mutex
	transmit func(ctx context.Context, cmd []byte) ([]byte, error) // guarded by mu
	reset    func(ctx context.Context) ([]byte, error)             // guarded by mu
	sent     [][]byte                                              // guarded by mu
	closed   bool                                                  // guarded by mu
	closedCh chan struct{}                                         // closed by the first Close
}

func newFakeCard() *fakeCard {
	return &fakeCard{atr: []byte{0x3b, 0x00}, closedCh: make(chan struct{})}
}

// waitClosed waits until the card has been closed.
func (c *fakeCard) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-c.closedCh:
	case <-time.After(10 * time.Second):
		t.Fatal("card not closed within 10s")
	}
}

func (c *fakeCard) ATR() []byte { return c.atr }

func (c *fakeCard) Transmit(ctx context.Context, cmd []byte) ([]byte, error) {
	c.mu.Lock()
	c.sent = append(c.sent, append([]byte(nil), cmd...))
	f := c.transmit
	c.mu.Unlock()
	if f == nil {
		return []byte{0x90, 0x00}, nil
	}
	return f(ctx, cmd)
}

func (c *fakeCard) Reset(ctx context.Context, kind card.ResetKind) ([]byte, error) {
	c.mu.Lock()
	f := c.reset
	c.mu.Unlock()
	if f == nil {
		return c.atr, nil
	}
	return f(ctx)
}

func (c *fakeCard) Close() error {
	c.mu.Lock()
	if !c.closed {
		close(c.closedCh)
	}
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *fakeCard) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *fakeCard) setTransmit(f func(ctx context.Context, cmd []byte) ([]byte, error)) {
	c.mu.Lock()
	c.transmit = f
	c.mu.Unlock()
}

// runner runs a Session or Manager in a goroutine.
type runner struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
}

// start runs run in a goroutine; the test's cleanup stops it.
func start(t *testing.T, run func(ctx context.Context) error) *runner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = run(ctx)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the run and returns its result.
func (r *runner) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// wait returns the run's result once it ends by itself.
func (r *runner) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end within 10s")
		return nil
	}
}
