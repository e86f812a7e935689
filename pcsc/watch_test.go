package pcsc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

var (
	atrA = []byte{0x3b, 0x9f, 0x96, 0x80, 0x1f}
	atrB = []byte{0x3b, 0x9f, 0x96, 0x81, 0x31}
)

// watchRun is a Watch over a fake, inside a synctest bubble.
type watchRun struct {
	t      *testing.T
	events chan ReaderEvent
	cancel context.CancelFunc
	done   chan struct{}
}

func startWatch(t *testing.T, sys *fakeSys, opts WatchOptions) *watchRun {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w, err := newWatcher(sys, opts, nil)
	if err == nil {
		t.Fatal("newWatcher accepted a nil function")
	}
	r := &watchRun{t: t, events: make(chan ReaderEvent, 100), done: make(chan struct{})}
	w, err = newWatcher(sys, opts, func(ev ReaderEvent) { r.events <- ev })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		w.run(ctx)
	}()
	t.Cleanup(r.stop) // also on failure, so the bubble can end
	return r
}

// expect waits until the watcher is idle and checks the events since the
// last call.
func (r *watchRun) expect(want ...ReaderEvent) {
	r.t.Helper()
	synctest.Wait()
	var got []ReaderEvent
	for len(r.events) > 0 {
		got = append(got, <-r.events)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		r.t.Fatalf("events:\n got %v\nwant %v", got, want)
	}
}

func (r *watchRun) stop() {
	r.cancel()
	<-r.done
}

func present(reader string, atr []byte) ReaderEvent {
	return ReaderEvent{Reader: reader, CardPresent: true, ATR: atr}
}
func absent(reader string) ReaderEvent { return ReaderEvent{Reader: reader} }
func gone(reader string) ReaderEvent   { return ReaderEvent{Reader: reader, Gone: true} }

func TestWatchInitialStateAndChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.addReader("A")
		sys.addReader("B")
		sys.insert("A", atrA)
		w := startWatch(t, sys, WatchOptions{})
		w.expect(present("A", atrA), absent("B"))

		sys.insert("B", atrB)
		w.expect(present("B", atrB))
		sys.remove("A")
		w.expect(absent("A"))
		sys.insert("A", atrB)
		w.expect(present("A", atrB))

		// Swapped between two looks: removal, then the new card.
		sys.swap("A", atrA)
		w.expect(absent("A"), present("A", atrA))

		// Connecting changes the reader's flags (in use), not the card.
		sctx, _ := sys.EstablishContext()
		h, err := sctx.Connect("A", shareExclusive, AnyProtocol)
		if err != nil {
			t.Fatal(err)
		}
		w.expect()
		h.Disconnect(leaveCard)
		sctx.Release()
		w.expect()

		// A mute card.
		sys.remove("B")
		sys.insert("B", nil)
		w.expect(absent("B"), ReaderEvent{Reader: "B", CardPresent: true, Mute: true})

		w.stop()
		w.expect(gone("A"), gone("B"))
		if _, live, cards, _ := sys.counts(); live != 0 || cards != 0 {
			t.Fatalf("%d contexts and %d cards left open", live, cards)
		}
	})
}

func TestWatchReadersComeAndGo(t *testing.T) {
	for _, unknownErr := range []bool{false, true} {
		t.Run(fmt.Sprintf("unknownReaderErr=%v", unknownErr), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sys := newFakeSys()
				sys.unknownReaderErr = unknownErr
				w := startWatch(t, sys, WatchOptions{})
				w.expect() // no readers: no events, no error

				sys.addReader("A")
				w.expect(absent("A"))
				sys.addReader("B")
				w.expect(absent("B"))
				sys.insert("B", atrB)
				w.expect(present("B", atrB))
				sys.removeReader("A")
				w.expect(gone("A"))
				sys.addReader("A")
				w.expect(absent("A"))
				w.stop()
				w.expect(gone("A"), gone("B"))
			})
		})
	}
}

func TestWatchFilter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		for _, r := range []string{"Virtual PCD 00 00", "Virtual PCD 00 01", "Yubico YubiKey 00 00"} {
			sys.addReader(r)
		}
		w := startWatch(t, sys, WatchOptions{Filter: Filter{Include: []string{"Virtual*"}, Exclude: []string{"/01$/"}}})
		w.expect(absent("Virtual PCD 00 00"))
		sys.insert("Yubico YubiKey 00 00", atrA)
		sys.insert("Virtual PCD 00 01", atrA)
		w.expect()
		w.stop()
		w.expect(gone("Virtual PCD 00 00"))
	})
	if err := Watch(context.Background(), WatchOptions{Filter: Filter{Include: []string{"["}}}, func(ReaderEvent) {}); err == nil {
		t.Fatal("Watch accepted a bad pattern")
	}
}

func TestWatchSurvivesPcscdRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.addReader("A")
		sys.insert("A", atrA)
		w := startWatch(t, sys, WatchOptions{MinBackoff: time.Second, MaxBackoff: 4 * time.Second})
		w.expect(present("A", atrA))

		sys.setDown(true)
		w.expect(gone("A"))
		est0, _, _, _ := sys.counts()
		// Backoff doubles from 1s (with jitter in [d/2, d]) up to 4s.
		start := time.Now()
		time.Sleep(30 * time.Second)
		est1, _, _, _ := sys.counts()
		if n := est1 - est0; n < 7 || n > 30/0.5 {
			t.Fatalf("%d attempts in 30s of outage with backoff 1s..4s", n)
		}
		sys.setDown(false)
		time.Sleep(4 * time.Second) // at most one maximal backoff
		w.expect(present("A", atrA))
		if time.Since(start) > 35*time.Second {
			t.Fatal("recovery took too long")
		}

		// pcscd restarts with the card gone and a new reader.
		sys.setDown(true)
		sys.remove("A")
		sys.addReader("B")
		w.expect(gone("A"))
		sys.setDown(false)
		time.Sleep(time.Second)
		w.expect(absent("A"), absent("B"))
		w.stop()
		w.expect(gone("A"), gone("B"))
		if _, live, _, _ := sys.counts(); live != 0 {
			t.Fatalf("%d contexts left", live)
		}
	})
}

func TestWatchStartsWithoutPcscd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.setDown(true)
		sys.addReader("A")
		w := startWatch(t, sys, WatchOptions{})
		w.expect()
		sys.setDown(false)
		time.Sleep(10 * time.Second) // default MaxBackoff
		w.expect(absent("A"))
		w.stop()
		w.expect(gone("A"))
	})
}

// TestWatchCancelInterruptsWait: stopping interrupts the wait at once; a
// Cancel that pcsc-lite forgets is sent again, so the watcher stops after
// cancelRetry per lost Cancel, not after its poll timeout (an hour).
func TestWatchCancelInterruptsWait(t *testing.T) {
	for _, lost := range []int{0, 2} {
		t.Run(fmt.Sprintf("%d lost", lost), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sys := newFakeSys()
				sys.dropCancels = lost
				sys.addReader("A")
				w := startWatch(t, sys, WatchOptions{PollTimeout: time.Hour})
				w.expect(absent("A"))
				start := time.Now()
				w.stop()
				if d, want := time.Since(start), time.Duration(lost)*cancelRetry; d != want {
					t.Fatalf("stop took %v of fake time, want %v", d, want)
				}
				if _, _, _, cancels := sys.counts(); cancels != lost+1 {
					t.Fatalf("%d Cancel calls, want %d", cancels, lost+1)
				}
				w.expect(gone("A"))
			})
		})
	}
}

func TestWatchLostCancelBoundedByPollTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.dropCancel = true
		sys.addReader("A")
		w := startWatch(t, sys, WatchOptions{})
		w.expect(absent("A"))
		start := time.Now()
		w.stop()
		if d := time.Since(start); d > DefaultPollTimeout {
			t.Fatalf("stop took %v with every Cancel lost, want <= %v", d, DefaultPollTimeout)
		}
	})
}

// TestWatchPollTimeout: each wait lasts PollTimeout when nothing changes.
func TestWatchPollTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.addReader("A")
		w := startWatch(t, sys, WatchOptions{PollTimeout: 5 * time.Second})
		w.expect(absent("A"))
		waits := func() int {
			sys.mu.Lock()
			defer sys.mu.Unlock()
			return sys.statusWaits
		}
		before := waits()
		time.Sleep(5*time.Second - time.Nanosecond)
		synctest.Wait()
		if n := waits(); n != before {
			t.Fatalf("%d waits before PollTimeout elapsed", n-before)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if n := waits(); n != before+1 {
			t.Fatalf("%d waits after PollTimeout elapsed, want 1", n-before)
		}
		w.stop()
		w.expect(gone("A"))
	})
}

func TestWatchCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sys := newFakeSys()
	sys.addReader("A")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := newWatcher(sys, WatchOptions{Logger: quiet}, func(ev ReaderEvent) { t.Errorf("event %v after cancel", ev) })
	if err != nil {
		t.Fatal(err)
	}
	w.run(ctx)
}

func TestWatchATRIsACopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sys := newFakeSys()
		sys.addReader("A")
		sys.insert("A", atrA)
		w := startWatch(t, sys, WatchOptions{})
		synctest.Wait()
		ev := <-w.events
		ev.ATR[0] = 0
		sys.swap("A", atrA)
		synctest.Wait()
		<-w.events
		if ev2 := <-w.events; !bytes.Equal(ev2.ATR, atrA) {
			t.Fatalf("ATR %x changed by the consumer's edit", ev2.ATR)
		}
		w.stop()
	})
}
