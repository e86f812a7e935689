package pcsc

// Tests against the real stack: a private pcscd (internal/testenv/pcscdtest) with
// two vpcd slots, and simulated cards (card/sim) put into them by
// internal/vpcd. They exercise the ebfe/scard adapter that the fake-based
// tests cannot reach. Skipped when pcscd or vpcd are not installed, failed
// then under CI=true.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/internal/vpcd"
)

// eventTimeout bounds waits for pcscd to notice a change (it polls vpcd
// every 400 ms); generous for a loaded CI machine.
const eventTimeout = 30 * time.Second

type stack struct {
	t     *testing.T
	d     *pcscdtest.Daemon
	slots [pcscdtest.Slots]*vpcd.Slot
}

func startStack(t *testing.T) *stack {
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	s := &stack{t: t, d: pcscdtest.Start(t)}
	for i := range s.slots {
		s.slots[i] = vpcd.NewSlot(s.d.SlotAddr(i))
		sl := s.slots[i]
		t.Cleanup(func() { sl.Remove() })
	}
	return s
}

func (s *stack) insert(i int, c vpcd.Card) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	if err := s.slots[i].Insert(ctx, c); err != nil {
		s.t.Fatal(err)
	}
}

func (s *stack) remove(i int) {
	s.t.Helper()
	if err := s.slots[i].Remove(); err != nil {
		s.t.Fatalf("removing card from slot %d: %v", i, err)
	}
}

// watch runs Watch for the test and returns its events.
type watchEvents struct {
	t  *testing.T
	ch chan ReaderEvent
}

func (s *stack) watch() *watchEvents {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchEvents{t: s.t, ch: make(chan ReaderEvent, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := Watch(ctx, WatchOptions{
			Filter:     Filter{Include: []string{pcscdtest.ReaderName + "*"}},
			Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		}, func(ev ReaderEvent) { w.ch <- ev })
		if err != nil {
			s.t.Error(err)
		}
	}()
	s.t.Cleanup(func() { cancel(); <-done })
	return w
}

// waitFor skips events until one matches.
func (w *watchEvents) waitFor(what string, match func(ReaderEvent) bool) ReaderEvent {
	w.t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	for {
		select {
		case ev := <-w.ch:
			if match(ev) {
				return ev
			}
		case <-timer.C:
			w.t.Fatalf("no event %s within %v", what, eventTimeout)
		}
	}
}

func (w *watchEvents) present(reader string) ReaderEvent {
	w.t.Helper()
	return w.waitFor(reader+" present", func(ev ReaderEvent) bool { return ev.Reader == reader && ev.CardPresent })
}

func (w *watchEvents) absent(reader string) ReaderEvent {
	w.t.Helper()
	return w.waitFor(reader+" absent", func(ev ReaderEvent) bool { return ev.Reader == reader && !ev.CardPresent && !ev.Gone })
}

func (w *watchEvents) gone(reader string) ReaderEvent {
	w.t.Helper()
	return w.waitFor(reader+" gone", func(ev ReaderEvent) bool { return ev.Reader == reader && ev.Gone })
}

func openCard(t *testing.T, reader string, opts OpenOptions) *Card {
	t.Helper()
	c, err := Open(context.Background(), reader, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRealReadersAndEvents(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	r0, r1 := s.d.Reader(0), s.d.Reader(1)

	got, err := Readers(ctx, Filter{})
	if err != nil || !slices.Equal(got, []string{r0, r1}) {
		t.Fatalf("Readers = %q, %v; want %q", got, err, []string{r0, r1})
	}
	got, err = Readers(ctx, Filter{Exclude: []string{"*01"}})
	if err != nil || !slices.Equal(got, []string{r0}) {
		t.Fatalf("filtered Readers = %q, %v", got, err)
	}

	w := s.watch()
	w.absent(r0)
	w.absent(r1)
	s.insert(0, sim.New(sim.Config{Protocol: sim.T1}))
	if ev := w.present(r0); !bytes.Equal(ev.ATR, sim.ATRT1) {
		t.Fatalf("ATR %x, want %x", ev.ATR, sim.ATRT1)
	}
	snap, err := Snapshot(ctx, Filter{})
	if err != nil || len(snap) != 2 || !snap[0].CardPresent || !bytes.Equal(snap[0].ATR, sim.ATRT1) || snap[1].CardPresent {
		t.Fatalf("Snapshot = %v, %v", snap, err)
	}
	s.remove(0)
	w.absent(r0)
	s.insert(0, sim.New(sim.Config{Protocol: sim.T0}))
	if ev := w.present(r0); !bytes.Equal(ev.ATR, sim.ATRT0) {
		t.Fatalf("re-inserted ATR %x, want %x", ev.ATR, sim.ATRT0)
	}

	// Open: empty reader, unknown reader, exclusive vs shared.
	if _, err := Open(ctx, r1, OpenOptions{}); !errors.Is(err, card.ErrNoCard) {
		t.Fatalf("Open of empty reader = %v, want card.ErrNoCard", err)
	}
	if _, err := Open(ctx, "No Such Reader 00 00", OpenOptions{}); !errors.Is(err, ErrReaderUnavailable) {
		t.Fatalf("Open of unknown reader = %v, want ErrReaderUnavailable", err)
	}
	c := openCard(t, r0, OpenOptions{})
	if _, err := Open(ctx, r0, OpenOptions{Shared: true}); !errors.Is(err, CodeSharingViolation) {
		t.Fatalf("Open of exclusively held card = %v, want SCARD_E_SHARING_VIOLATION", err)
	}
	c.Close()
	a := openCard(t, r0, OpenOptions{Shared: true})
	b := openCard(t, r0, OpenOptions{Shared: true})
	for _, x := range []*Card{a, b} {
		if _, err := x.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00}); err != nil {
			t.Fatalf("shared Transmit: %v", err)
		}
	}
}

func TestRealIdentifyT0AndT1(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	cfgs := []sim.Config{
		{ICCID: "8949440000001155314", EID: "89049032123451234512345678901235", Protocol: sim.T0, T0GetResponse: true},
		{ICCID: "89882119900000000017", EID: "89086030202200000022000009934391", Protocol: sim.T1},
	}
	wantProto := []Protocol{T0, T1}
	w := s.watch()
	for i, cfg := range cfgs {
		s.insert(i, sim.New(cfg))
		w.present(s.d.Reader(i))
	}
	// Both readers at once, from two goroutines.
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		c := openCard(t, s.d.Reader(i), OpenOptions{})
		if c.Protocol() != wantProto[i] {
			t.Errorf("slot %d: protocol %v, want %v", i, c.Protocol(), wantProto[i])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				id, err := card.Identify(ctx, c)
				if err != nil {
					t.Errorf("slot %d: Identify: %v", i, err)
					return
				}
				if id.ICCID != cfg.ICCID || id.EID != cfg.EID {
					t.Errorf("slot %d: identity %+v, want ICCID %s EID %s", i, id, cfg.ICCID, cfg.EID)
				}
			}
		}()
	}
	wg.Wait()
}

// selectBig selects EF 6F99 (4000 bytes, byte i = i mod 251) of the sim.
func selectBig(t *testing.T, c *Card) {
	t.Helper()
	ctx := context.Background()
	for _, apdu := range [][]byte{
		{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x3f, 0x00},
		{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x6f, 0x99},
	} {
		rsp, err := c.Transmit(ctx, apdu)
		if err != nil || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
			t.Fatalf("select %x: %x, %v", apdu, rsp, err)
		}
	}
}

func TestRealExtendedAPDUs(t *testing.T) {
	for _, proto := range []sim.Protocol{sim.T1, sim.T0} {
		t.Run(proto.String(), func(t *testing.T) {
			s := startStack(t)
			ctx := context.Background()
			w := s.watch()
			s.insert(0, sim.New(sim.Config{Protocol: proto}))
			w.present(s.d.Reader(0))
			c := openCard(t, s.d.Reader(0), OpenOptions{})
			selectBig(t, c)

			// READ BINARY with extended Le = 3000: a 3002-byte response.
			rsp, err := c.Transmit(ctx, []byte{0x00, 0xb0, 0x00, 0x00, 0x00, 0x0b, 0xb8})
			if err != nil {
				t.Fatalf("extended READ BINARY: %v", err)
			}
			if len(rsp) != 3002 || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) || rsp[2999] != byte(2999%251) {
				t.Fatalf("extended READ BINARY: %d bytes, SW %x", len(rsp), rsp[len(rsp)-2:])
			}

			// UPDATE BINARY with extended Lc = 1000 at offset 100, read back.
			data := make([]byte, 1000)
			for i := range data {
				data[i] = byte(i * 7)
			}
			cmd := append([]byte{0x00, 0xd6, 0x00, 0x64, 0x00, 0x03, 0xe8}, data...)
			if rsp, err := c.Transmit(ctx, cmd); err != nil || !bytes.Equal(rsp, []byte{0x90, 0x00}) {
				t.Fatalf("extended UPDATE BINARY: %x, %v", rsp, err)
			}
			rsp, err = c.Transmit(ctx, []byte{0x00, 0xb0, 0x00, 0x64, 0x00, 0x03, 0xe8})
			if err != nil || !bytes.Equal(rsp[:len(rsp)-2], data) {
				t.Fatalf("read back: %d bytes, %v", len(rsp), err)
			}
		})
	}
}

func TestRealResetWarmAndCold(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	rc := vpcd.NewResetRecorder(sim.New(sim.Config{Protocol: sim.T1}))
	w := s.watch()
	s.insert(0, rc)
	w.present(s.d.Reader(0))
	c := openCard(t, s.d.Reader(0), OpenOptions{})
	before := rc.Resets()
	atr0 := c.ATR()

	atr1, err := c.Reset(ctx, card.WarmReset)
	if err != nil {
		t.Fatalf("warm reset: %v", err)
	}
	if bytes.Equal(atr1, atr0) || !bytes.Equal(atr1, rc.ATR()) || !bytes.Equal(c.ATR(), atr1) {
		t.Fatalf("warm reset ATR %x (before %x, card now %x)", atr1, atr0, rc.ATR())
	}
	if got := rc.Resets()[len(before):]; !slices.Equal(got, []card.ResetKind{card.WarmReset}) {
		t.Fatalf("warm reset reached the card as %v", got)
	}

	before = rc.Resets()
	atr2, err := c.Reset(ctx, card.ColdReset)
	if err != nil {
		t.Fatalf("cold reset: %v", err)
	}
	if bytes.Equal(atr2, atr1) || !bytes.Equal(atr2, rc.ATR()) {
		t.Fatalf("cold reset ATR %x (before %x, card now %x)", atr2, atr1, rc.ATR())
	}
	if got := rc.Resets()[len(before):]; !slices.Equal(got, []card.ResetKind{card.ColdReset}) {
		t.Fatalf("cold reset reached the card as %v", got)
	}
	// The card works after the resets.
	if id, err := card.Identify(ctx, c); err != nil || id.ICCID != sim.DefaultICCID {
		t.Fatalf("Identify after resets: %+v, %v", id, err)
	}
}

func TestRealRemovalMidSession(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	r0 := s.d.Reader(0)
	w := s.watch()
	s.insert(0, sim.New(sim.Config{}))
	w.present(r0)
	c := openCard(t, r0, OpenOptions{})
	apdu := []byte{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x3f, 0x00}
	if _, err := c.Transmit(ctx, apdu); err != nil {
		t.Fatal(err)
	}

	// Pulled, and the very next APDU runs into it: pcscd may not have
	// polled vpcd yet.
	s.remove(0)
	_, err := c.Transmit(ctx, apdu)
	if !errors.Is(err, card.ErrRemoved) {
		t.Fatalf("Transmit after removal = %v, want card.ErrRemoved", err)
	}
	t.Logf("Transmit right after removal: %v", err)
	w.absent(r0)
	if _, err := c.Transmit(ctx, apdu); !errors.Is(err, card.ErrRemoved) {
		t.Fatalf("Transmit after pcscd saw the removal = %v, want card.ErrRemoved", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close of removed card: %v", err)
	}

	// Re-insertion: a new Open works.
	s.insert(0, sim.New(sim.Config{}))
	w.present(r0)
	c2 := openCard(t, r0, OpenOptions{})
	if _, err := c2.Transmit(ctx, apdu); err != nil {
		t.Fatalf("Transmit after re-insertion: %v", err)
	}
}

func TestRealPcscdRestart(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	r0, r1 := s.d.Reader(0), s.d.Reader(1)
	w := s.watch()
	w.absent(r0)
	w.absent(r1)
	s.insert(0, sim.New(sim.Config{}))
	w.present(r0)
	c := openCard(t, r0, OpenOptions{})

	s.d.Stop()
	w.gone(r0)
	w.gone(r1)
	<-s.slots[0].Done() // vpcd went away with pcscd
	s.slots[0].Remove()
	_, err := c.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x3f, 0x00})
	if !errors.Is(err, card.ErrRemoved) {
		t.Fatalf("Transmit with pcscd stopped = %v, want card.ErrRemoved", err)
	}
	t.Logf("Transmit with pcscd stopped: %v", err)
	c.Close()
	if _, err := Readers(ctx, Filter{}); !errors.Is(err, ErrServiceUnavailable) {
		t.Fatalf("Readers with pcscd stopped = %v, want ErrServiceUnavailable", err)
	}

	s.d.StartAgain()
	w.absent(r0)
	w.absent(r1)
	s.insert(1, sim.New(sim.Config{}))
	w.present(r1)
	c1 := openCard(t, r1, OpenOptions{})
	if id, err := card.Identify(ctx, c1); err != nil || id.ICCID != sim.DefaultICCID {
		t.Fatalf("Identify after restart: %+v, %v", id, err)
	}
}

// sizeCard answers every command with as many data bytes as its extended
// Le asks for (0000 = 65536), and 6700 to a command it cannot parse.
type sizeCard struct{}

func (sizeCard) ATR() []byte { return sim.ATRT1 }
func (sizeCard) Process(cmd []byte) []byte {
	c, err := card.ParseCommand(cmd)
	if err != nil {
		return []byte{0x67, 0x00}
	}
	rsp := make([]byte, c.Ne+2)
	for i := range c.Ne {
		rsp[i] = byte(i)
	}
	rsp[c.Ne], rsp[c.Ne+1] = 0x90, 0x00
	return rsp
}

// TestRealAPDUSizeLimits finds what the stack carries: vpcd's 2-byte
// length field caps both directions at 65535 bytes, so the largest
// response is 65533 data bytes + SW, and the largest command 65535 bytes.
func TestRealAPDUSizeLimits(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	w := s.watch()
	s.insert(0, sizeCard{})
	w.present(s.d.Reader(0))
	c := openCard(t, s.d.Reader(0), OpenOptions{})

	rsp, err := c.Transmit(ctx, []byte{0x00, 0xb0, 0x00, 0x00, 0x00, 0xff, 0xfd})
	if err != nil || len(rsp) != 65535 || rsp[65532] != byte(65532%256) {
		t.Fatalf("65533-byte response: %d bytes, %v", len(rsp), err)
	}
	big := append([]byte{0x00, 0xd6, 0x00, 0x00, 0x00, 0xff, 0xf8}, make([]byte, 0xfff8)...)
	if len(big) != 65535 {
		t.Fatalf("test command is %d bytes", len(big))
	}
	if rsp, err := c.Transmit(ctx, big); err != nil || !bytes.Equal(rsp, []byte{0x90, 0x00}) {
		t.Fatalf("65535-byte command: %x, %v", rsp, err)
	}
	// One byte more does not fit vpcd's frame: internal/vpcd answers
	// 6700 instead (wrong length: ask for less).
	rsp, err = c.Transmit(ctx, []byte{0x00, 0xb0, 0x00, 0x00, 0x00, 0xff, 0xfe})
	if err != nil || !bytes.Equal(rsp, []byte{0x67, 0x00}) {
		t.Fatalf("65534-byte response: %x, %v; want 6700", rsp, err)
	}
	// A command of 65536 bytes: vpcd refuses to send it and drops the
	// virtual card's connection, so the card counts as removed.
	big = append(big, 0x00)
	big[5], big[6] = 0xff, 0xf9
	_, err = c.Transmit(ctx, big)
	t.Logf("65536-byte command: %v", err)
	if err == nil {
		t.Fatal("a 65536-byte command passed vpcd")
	}
}

// commandLog is a vpcd card that records the commands reaching it.
type commandLog struct {
	*vpcd.ResetRecorder
	mu   sync.Mutex
	cmds int
}

func (c *commandLog) Process(cmd []byte) []byte {
	c.mu.Lock()
	c.cmds++
	c.mu.Unlock()
	return c.ResetRecorder.Process(cmd)
}

func (c *commandLog) commands() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmds
}

// TestRealForeignReset: our Card shares the card with another application
// (its own PC/SC context), which resets it. pcsc-lite 1.9.9 then fails
// SCardTransmit and SCardStatus on our handle with SCARD_W_RESET_CARD
// until we SCardReconnect: Transmit reports card.ErrReset without sending
// the command, acknowledges, and the next command works. SCardDisconnect
// with SCARD_UNPOWER_CARD leaves the card powered down (vpcd would answer
// APDUs all the same; a real reader would not): the acknowledgement
// powers it up, which vpcd reports as a cold reset.
func TestRealForeignReset(t *testing.T) {
	for _, how := range []struct {
		name       string
		d          disposition
		disconnect bool
		kind       card.ResetKind
	}{
		{"reconnect reset", resetCard, false, card.WarmReset},
		{"disconnect unpower", unpowerCard, true, card.ColdReset},
	} {
		t.Run(how.name, func(t *testing.T) {
			s := startStack(t)
			ctx := context.Background()
			r0 := s.d.Reader(0)
			vc := &commandLog{ResetRecorder: vpcd.NewResetRecorder(sim.New(sim.Config{Protocol: sim.T1}))}
			w := s.watch()
			s.insert(0, vc)
			w.present(r0)
			c := openCard(t, r0, OpenOptions{Shared: true})
			selectMF := []byte{0x00, 0xa4, 0x00, 0x0c, 0x02, 0x3f, 0x00}
			if _, err := c.Transmit(ctx, selectMF); err != nil {
				t.Fatal(err)
			}
			atr0, before := c.ATR(), len(vc.Resets())

			resetByOther(t, realSystem, r0, how.d, how.disconnect)
			if _, err := c.h.Status(); !errors.Is(err, CodeResetCard) {
				t.Fatalf("SCardStatus with a reset pending = %v, want SCARD_W_RESET_CARD (as the fake models)", err)
			}
			sent := vc.commands()
			_, err := c.Transmit(ctx, selectMF)
			t.Logf("Transmit after the other application's reset: %v", err)
			if !errors.Is(err, card.ErrReset) || !errors.Is(err, CodeResetCard) || errors.Is(err, card.ErrRemoved) {
				t.Fatalf("Transmit = %v, want card.ErrReset, not card.ErrRemoved", err)
			}
			if n := vc.commands() - sent; n != 0 {
				t.Fatalf("%d commands reached the card", n)
			}
			// The other application's warm reset; or, as it left the
			// card powered down, our power-up.
			if got := vc.Resets()[before:]; !slices.Equal(got, []card.ResetKind{how.kind}) {
				t.Fatalf("resets reaching the card: %v, want %v", got, []card.ResetKind{how.kind})
			}
			if atr := c.ATR(); bytes.Equal(atr, atr0) || !bytes.Equal(atr, vc.ATR()) {
				t.Fatalf("ATR %x after the reset (before %x, card now %x)", atr, atr0, vc.ATR())
			}
			if rsp, err := c.Transmit(ctx, selectMF); err != nil || !bytes.Equal(rsp, []byte{0x90, 0x00}) {
				t.Fatalf("SELECT MF after the acknowledged reset: %x, %v", rsp, err)
			}

			// Reset with a reset pending: its SCardReconnect acknowledges.
			resetByOther(t, realSystem, r0, how.d, how.disconnect)
			atr, err := c.Reset(ctx, card.WarmReset)
			if err != nil || !bytes.Equal(atr, vc.ATR()) {
				t.Fatalf("Reset with a reset pending: %x, %v (card ATR %x)", atr, err, vc.ATR())
			}
			if id, err := card.Identify(ctx, c); err != nil || id.ICCID != sim.DefaultICCID {
				t.Fatalf("Identify after the resets: %+v, %v", id, err)
			}
		})
	}
}
