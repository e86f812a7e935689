package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/agent/agenttest"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/internal/testenv/pcscdtest"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/pcsc"
)

// Importing pcscdtest points PCSCLITE_CSOCK_NAME at this process's
// private pcscd socket, so no test here ever talks to the system's pcscd.

// TestReadersPCSCNotRunning: with no pcscd the backend is skipped with the
// reason. No daemon is started, so this runs without pcscd installed.
func TestReadersPCSCNotRunning(t *testing.T) {
	code, out, errs := runCmd(t, noEnv, "readers", "--backend", "pcsc")
	if code != 0 || !strings.Contains(out, "pcsc     -       -     skipped: pcscd not running") {
		t.Errorf("exit %d, output:\n%s%s", code, out, errs)
	}
}

// waitCard waits (on pcsc.Watch events, not by polling) until pcscd
// reports reader with a card (present) or without one.
func waitCard(t *testing.T, reader string, present bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	found := false
	opts := pcsc.WatchOptions{Filter: pcsc.Filter{Include: []string{reader}}, Logger: slog.New(slog.DiscardHandler)}
	err := pcsc.Watch(ctx, opts, func(ev pcsc.ReaderEvent) {
		if ev.Reader == reader && !ev.Gone && ev.CardPresent == present && !found {
			found = true
			cancel()
		}
	})
	if err != nil || !found {
		t.Fatalf("reader %q never reported present=%v (Watch: %v)", reader, present, err)
	}
}

// insert puts a simulated card into vpcd slot i and waits until pcscd
// has seen it.
func insert(t *testing.T, d *pcscdtest.Daemon, i int, c *sim.Card) *vpcd.Slot {
	t.Helper()
	slot := vpcd.NewSlot(d.SlotAddr(i))
	t.Cleanup(func() { slot.Remove() })
	if err := slot.Insert(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitCard(t, d.Reader(i), true)
	return slot
}

// TestReadersPCSC lists a private pcscd's vpcd readers: the selected one
// with the card's ATR, ICCID and EID, the excluded one with the reason.
func TestReadersPCSC(t *testing.T) {
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	d := pcscdtest.Start(t)
	c0 := sim.New(sim.Config{ICCID: "89882119900000000017"})
	insert(t, d, 0, c0)
	insert(t, d, 1, sim.New(sim.Config{Protocol: sim.T1}))

	code, out, errs := runCmd(t, noEnv, "readers", "--backend", "pcsc", "--reader-exclude", "*01")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	t.Logf("wsrc-agent readers:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("output:\n%s", out)
	}
	id := c0.Identity()
	for _, want := range []string{"pcsc", d.Reader(0) + " (PC/SC)", "loaded", "ATR 3b9f96801fc78031e073fe211b575352435653494da3", "ICCID " + id.ICCID, "EID " + id.EID} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("line %q lacks %q", lines[1], want)
		}
	}
	for _, want := range []string{d.Reader(1), `skipped: excluded by reader exclude pattern "*01"`, "ATR 3b9f968131fe458031e073fe211b575352435653494d"} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("line %q lacks %q", lines[2], want)
		}
	}
	if strings.Contains(lines[2], "ICCID") {
		t.Errorf("the excluded reader's card was opened: %q", lines[2])
	}
}

// TestServePCSC serves a vpcd card through pcscd: the server sees the
// reader's name and the card's ATR and can identify it; removing the card
// closes the session with "card removed".
func TestServePCSC(t *testing.T) {
	if testing.Short() {
		t.Skip("real PC/SC stack test in -short mode")
	}
	d := pcscdtest.Start(t)
	c := sim.New(sim.Config{ICCID: "89882119900000000025", Protocol: sim.T1})
	slot := insert(t, d, 0, c)

	srv := agenttest.NewServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--server", srv.URL(), "--backend", "pcsc", "--reader-include", pcscdtest.ReaderName + "*"}, noEnv, &syncBuffer{}, &stderr)
	}()
	conn := srv.Accept()
	h := conn.Hello()
	if h.Reader != d.Reader(0) || !bytes.Equal(h.ATR, c.ATR()) {
		t.Errorf("hello from %q with ATR %x", h.Reader, h.ATR)
	}
	id, err := card.Identify(ctx, conn.Transmitter())
	if err != nil || id.ICCID != c.Identity().ICCID {
		t.Errorf("Identify = %+v, %v", id, err)
	}
	slot.Remove()
	if code, _ := conn.ExpectClose(); code != websocket.CloseGoingAway {
		t.Errorf("close code %d on removal, want 1001", code)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d; log:\n%s", code, stderr.String())
	}
	if log := stderr.String(); !strings.Contains(log, "backends=pcsc") || !strings.Contains(log, "card removed") {
		t.Errorf("log:\n%s", log)
	}
}
