package vpcdbridge

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/pcsc"
	"github.com/wsrc-go/wsrc/protocol"
	"github.com/wsrc-go/wsrc/server"
)

// Commands of the scenarios (card/sim's file tree).
var (
	selectMF    = mustHex("00a40004023f00")
	selectICCID = mustHex("00a40004022fe2")
	readICCID   = mustHex("00b000000a")
	selectBig   = mustHex("00a4000c026f99") // EF 6F99, 4000 bytes
	read256     = mustHex("00b0000000")     // short READ BINARY, Le=256
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// readExt is READ BINARY at offset 0 with an extended Le of n.
func readExt(n int) []byte { return []byte{0x00, 0xb0, 0x00, 0x00, 0x00, byte(n >> 8), byte(n)} }

// bigEF is the content of sim's EF 6F99: byte i is i mod 251.
func bigEF(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func simCard(i int, t0GetResponse bool) *sim.Card {
	return sim.New(sim.Config{ICCID: simbackend.ICCID(i), EID: simbackend.EID(i), Protocol: sim.T0, T0GetResponse: t0GetResponse})
}

func rawICCID(t *testing.T, iccid string) []byte {
	t.Helper()
	b, err := card.EncodeICCID(iccid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tool runs a PC/SC application from a Debian package against the private
// pcscd (PCSCLITE_CSOCK_NAME is inherited) and returns its output. A
// missing tool skips the test, or fails it under CI=true.
func tool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		pkg := map[string]string{"scriptor": "pcsc-tools", "opensc-tool": "opensc"}[name]
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (Debian package %s; CI=true, so this is a failure)", name, pkg)
		}
		t.Skipf("%s not installed (Debian package %s); skipping", name, pkg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out)
}

// hexOf lower-cases s and drops everything but hex digits, so that
// "3B:9F 96" and "3b9f96" compare equal.
func hexOf(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
			return r
		case r >= 'A' && r <= 'F':
			return r + ('a' - 'A')
		}
		return -1
	}, s)
}

// TestApplications: a T=0 card answering like a real one (61xx / GET
// RESPONSE, 6Cxx) behind agent and server is seen by PC/SC applications
// in the vpcd reader: the project's pcsc package (EF.ICCID, a 256-byte
// and an extended 4000-byte READ BINARY, case 4 SELECT whose answer comes
// through GET RESPONSE, resets from the application, warm and cold, with
// the new ATR), the card still held when no application has it open,
// then scriptor (pcsc-tools) and opensc-tool (opensc) with --atr,
// --send-apdu and --reset.
func TestApplications(t *testing.T) {
	e := newEnv(t, server.Config{})
	rec := vpcd.NewResetRecorder(simCard(0, true))
	iccid := simbackend.ICCID(0)
	e.agentCard(rec, "sim reader 0")
	w := e.watch()
	events := e.bridge(0, "iccid", iccid)
	waitEvent(t, events, "selected", kind(Selected))
	waitEvent(t, events, "inserted", kind(Inserted))
	reader := e.d.Reader(0)
	pe := w.present(reader)
	// pcscd's first power on (vpcd sends it as a reset) resets the
	// remote card once, and the reader shows the ATR that reset produced.
	if got := rec.Resets(); len(got) != 1 {
		t.Errorf("remote resets at insertion: %v, want one (the power on)", got)
	}
	if !bytes.Equal(pe.ATR, rec.ATR()) {
		t.Errorf("PC/SC sees ATR %x, the remote card's is %x", pe.ATR, rec.ATR())
	}

	c := open(t, reader)
	if fcp := transmit(t, c, selectMF, 0x9000); len(fcp) == 0 || fcp[0] != 0x62 {
		t.Errorf("SELECT MF (case 4, the card answers 61xx) gave FCP %x", fcp)
	}
	transmit(t, c, selectICCID, 0x9000)
	if got := transmit(t, c, readICCID, 0x9000); !bytes.Equal(got, rawICCID(t, iccid)) {
		t.Errorf("EF.ICCID %x", got)
	}
	transmit(t, c, selectBig, 0x9000)
	if got := transmit(t, c, read256, 0x9000); !bytes.Equal(got, bigEF(256)) {
		t.Errorf("READ BINARY Le=256: %d bytes", len(got))
	}
	if got := transmit(t, c, readExt(sim.BigEFSize), 0x9000); !bytes.Equal(got, bigEF(sim.BigEFSize)) {
		t.Errorf("extended READ BINARY: %d bytes, want %d", len(got), sim.BigEFSize)
	}
	// Wrong Le on T=0: the card answers 6Cxx, the agent re-sends.
	transmit(t, c, selectICCID, 0x9000)
	if got := transmit(t, c, mustHex("00b0000005"), 0x9000); !bytes.Equal(got, rawICCID(t, iccid)[:5]) {
		t.Errorf("READ BINARY Le=5: %x", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	atr, err := c.Reset(ctx, card.WarmReset)
	if err != nil {
		t.Fatalf("reset from the application: %v", err)
	}
	if got := rec.Resets(); len(got) != 2 || !bytes.Equal(atr, rec.ATR()) {
		t.Errorf("after the application's reset: remote resets %v, ATR %x, remote ATR %x", got, atr, rec.ATR())
	}
	transmit(t, c, selectMF, 0x9000)
	// A cold reset (power off and on) from the application resets the
	// remote card too.
	n := len(rec.Resets())
	if atr, err = c.Reset(ctx, card.ColdReset); err != nil {
		t.Fatalf("cold reset from the application: %v", err)
	}
	if len(rec.Resets()) <= n || !bytes.Equal(atr, rec.ATR()) {
		t.Errorf("after the cold reset: remote resets %v, ATR %x, remote ATR %x", rec.Resets(), atr, rec.ATR())
	}
	c.Close()

	// No application has the card open: the bridge still holds it.
	other := e.user(t)
	if _, err := other.Select(ctx, "iccid", iccid); !errContains(err, "in use by another user") {
		t.Errorf("another user selecting the card while no application uses it: %v, want in use", err)
	}

	// scriptor sends each line as an APDU.
	out := tool(t, "00 A4 00 04 02 3F 00\n00 A4 00 04 02 2F E2\n00 B0 00 00 0A\n", "scriptor", "-r", reader)
	if !strings.Contains(hexOf(out), hexOf(hex.EncodeToString(rawICCID(t, iccid))+"9000")) {
		t.Errorf("scriptor did not read EF.ICCID %x", rawICCID(t, iccid))
	}
	if strings.Count(out, "Normal processing") != 3 {
		t.Errorf("scriptor: want 3 APDUs answered 9000")
	}

	n = len(rec.Resets())
	out = tool(t, "", "opensc-tool", "--reader", "0", "--atr")
	if !strings.Contains(hexOf(out), hex.EncodeToString(rec.ATR())) {
		t.Errorf("opensc-tool --atr does not show the remote ATR %x", rec.ATR())
	}
	out = tool(t, "", "opensc-tool", "--reader", "0", "-c", "default",
		"-s", "00:a4:00:04:02:3f:00", "-s", "00:a4:00:04:02:2f:e2", "-s", "00:b0:00:00:0a")
	if !strings.Contains(hexOf(out), hex.EncodeToString(rawICCID(t, iccid))) || !strings.Contains(out, "SW1=0x90, SW2=0x00") {
		t.Errorf("opensc-tool --send-apdu did not read EF.ICCID")
	}
	tool(t, "", "opensc-tool", "--reader", "0", "--reset", "warm")
	if len(rec.Resets()) <= n {
		t.Errorf("opensc-tool --reset did not reach the remote card (resets %v)", rec.Resets())
	}
}

// TestCardPulledAndReturned: the card leaving the server (its agent
// stops) is a removed card in PC/SC, noticed while idle; when it comes
// back the bridge selects it again and it reappears. Then the card goes
// while an application holds it: the application's next APDU fails.
func TestCardPulledAndReturned(t *testing.T) {
	e := newEnv(t, server.Config{})
	iccid := simbackend.ICCID(0)
	pull := e.agentCard(simCard(0, false), "sim reader 0")
	w := e.watch()
	events := e.bridge(0, "iccid", iccid)
	reader := e.d.Reader(0)
	w.present(reader)
	c := open(t, reader)
	transmit(t, c, selectMF, 0x9000)
	c.Close()

	pull()
	w.absent(reader)
	ev := waitEvent(t, events, "released", kind(Released))
	if !errContains(ev.Err, "no longer lists the card") && !errContains(ev.Err, "card disconnected") {
		t.Errorf("released because %v", ev.Err)
	}
	ev = waitEvent(t, events, "waiting", kind(Waiting))
	if !errContains(ev.Err, "no card with ICCID "+iccid) || !errContains(ev.Err, "may not use it") {
		t.Errorf("waiting because %v, want the server's refusal with the hint", ev.Err)
	}

	pull = e.agentCard(simCard(0, false), "sim reader 0")
	w.present(reader)
	c = open(t, reader)
	transmit(t, c, selectICCID, 0x9000)
	if got := transmit(t, c, readICCID, 0x9000); !bytes.Equal(got, rawICCID(t, iccid)) {
		t.Errorf("EF.ICCID after the return: %x", got)
	}

	// Pulled while the application has it open: its next APDU fails
	// (whichever notices first, the APDU or the bridge's check).
	pull()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if r, err := c.Transmit(ctx, selectMF); err == nil {
		t.Errorf("APDU to a pulled card answered %x", r)
	}
	w.absent(reader)
	c.Close()
	e.agentCard(simCard(0, false), "sim reader 0")
	w.present(reader)
	transmit(t, open(t, reader), selectMF, 0x9000)
}

// TestServerRestart: when the server goes, the card leaves the reader at
// once (the connection's end is an event); when it is back and the agent
// has reconnected, the bridge selects the card again. pcscd restarting
// (vpcd closes the connection) makes the bridge insert the card again
// without releasing it.
func TestServerRestart(t *testing.T) {
	e := newEnv(t, server.Config{})
	iccid := simbackend.ICCID(0)
	e.agentCard(simCard(0, true), "sim reader 0")
	w := e.watch()
	events := e.bridge(0, "iccid", iccid)
	reader := e.d.Reader(0)
	w.present(reader)

	e.stopServer()
	w.absent(reader)
	ev := waitEvent(t, events, "released", kind(Released))
	if !errContains(ev.Err, "connection to the server ended") {
		t.Errorf("released because %v", ev.Err)
	}
	e.startServer()
	waitEvent(t, events, "selected again", kind(Selected))
	w.present(reader)
	c := open(t, reader)
	transmit(t, c, selectICCID, 0x9000)
	if got := transmit(t, c, readICCID, 0x9000); !bytes.Equal(got, rawICCID(t, iccid)) {
		t.Errorf("EF.ICCID after the restart: %x", got)
	}
	c.Close()

	e.d.Restart()
	ev = waitEvent(t, events, "removed by vpcd", kind(Removed))
	if !errContains(ev.Err, "vpcd closed the connection") {
		t.Errorf("removed because %v", ev.Err)
	}
	waitEvent(t, events, "inserted again", kind(Inserted))
	w.present(reader)
	transmit(t, open(t, reader), selectMF, 0x9000)
}

// TestTwoBridges: two cards on successive vpcd ports (readers 0 and 1),
// used at the same time; the second is chosen by its IMSI, which the
// server's identification read.
func TestTwoBridges(t *testing.T) {
	e := newEnv(t, server.Config{})
	w := e.watch()
	e.agentCard(simCard(0, false), "sim reader 0")
	e.bridge(0, "eid", simbackend.EID(0))
	e.agentCard(sim.New(sim.Config{ICCID: simbackend.ICCID(1), EID: sim.NoEID, USIM: true, IMSI: simbackend.IMSI(1), T0GetResponse: true}), "sim reader 1")
	e.bridge(1, "imsi", simbackend.IMSI(1))
	present := map[string]bool{}
	w.waitFor("both readers with a card", func(ev pcsc.ReaderEvent) bool {
		present[ev.Reader] = ev.CardPresent
		return present[e.d.Reader(0)] && present[e.d.Reader(1)]
	})
	cards := make([]*pcsc.Card, 2)
	for i := range 2 {
		cards[i] = open(t, e.d.Reader(i))
	}
	done := make(chan error, 2)
	for i, c := range cards {
		go func() {
			for range 20 {
				if err := readICCIDOf(c, simbackend.ICCID(i)); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// readICCIDOf reads EF.ICCID through c and compares it with iccid; it
// runs off the test's goroutine, so it returns an error.
func readICCIDOf(c *pcsc.Card, iccid string) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	want, err := card.EncodeICCID(iccid)
	if err != nil {
		return err
	}
	var r []byte
	for _, cmd := range [][]byte{selectMF, selectICCID, readICCID} {
		if r, err = c.Transmit(ctx, cmd); err != nil {
			return err
		}
	}
	if !bytes.Equal(r, append(want, 0x90, 0x00)) {
		return errors.New("read " + hex.EncodeToString(r) + ", want ICCID " + iccid)
	}
	return nil
}

// TestInUseThenFree: a card another user holds is not a silent empty
// reader: the bridge says why it waits, and takes the card when it is
// free.
func TestInUseThenFree(t *testing.T) {
	e := newEnv(t, server.Config{})
	iccid := simbackend.ICCID(0)
	e.agentCard(simCard(0, false), "sim reader 0")
	other := e.user(t)
	e.waitSelect(t, other, iccid)
	w := e.watch()
	events := e.bridge(0, "iccid", iccid)
	ev := waitEvent(t, events, "waiting", kind(Waiting))
	if !errContains(ev.Err, "in use by another user") {
		t.Errorf("waiting because %v", ev.Err)
	}
	other.Close()
	waitEvent(t, events, "inserted", kind(Inserted))
	w.present(e.d.Reader(0))
}

// TestNotAllowed: a card this account may not use is reported as such
// (the server says only that there is no such card, as it must).
func TestNotAllowed(t *testing.T) {
	const tokAgent = "wsrc_agent-token-0000000000000000000000000000000"
	const tokBob = "wsrc_bob-token-000000000000000000000000000000000"
	store, err := auth.NewStore(
		[]auth.User{{Name: "bob", TokenHashes: []auth.TokenHash{auth.HashToken(tokBob)}, Cards: auth.Rules{{ICCID: "8901*"}}}},
		[]auth.Agent{{Name: "testagent", TokenHashes: []auth.TokenHash{auth.HashToken(tokAgent)}, AllCards: true}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, server.Config{Auth: store})
	e.agentToken = tokAgent
	iccid := simbackend.ICCID(0)
	e.agentCard(simCard(0, false), "sim reader 0")
	events := e.bridge(0, "iccid", iccid, func(c *Config) {
		c.ClientOptions = append(c.ClientOptions, client.WithBasicAuth("bob", tokBob))
	})
	ev := waitEvent(t, events, "waiting", kind(Waiting))
	if !errContains(ev.Err, "no card with ICCID") || !errContains(ev.Err, "this account may not use it") {
		t.Errorf("waiting because %v", ev.Err)
	}
}

// user dials the server as a plain user.
func (e *env) user(t *testing.T) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := client.Dial(ctx, e.userURL(), client.WithRequestTimeout(waitTimeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitSelect selects the card with iccid as c once the server has
// identified it, trying again at every change of the server's cards.
func (e *env) waitSelect(t *testing.T, c *client.Client, iccid string) protocol.Identities {
	t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		changed := e.cards.Next() // before trying: no change is missed
		ids, err := c.Select(context.Background(), "iccid", iccid)
		if err == nil {
			return ids
		}
		var se *client.ServerError
		if !errors.As(err, &se) {
			t.Fatalf("selecting %s: %v", iccid, err)
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("selecting %s: %v (for %v)", iccid, err, waitTimeout)
		}
	}
}

// TestShared: with Share, the card is selected only while pcscd has it
// powered. Between PC/SC sessions another user may take it; the card then
// leaves the reader, and comes back when that user lets it go. A session
// selects it (other users are refused meanwhile) and its end releases it.
func TestShared(t *testing.T) {
	e := newEnv(t, server.Config{})
	iccid := simbackend.ICCID(0)
	rec := vpcd.NewResetRecorder(simCard(0, true))
	e.agentCard(rec, "sim reader 0")
	w := e.watch()
	events := e.bridge(0, "iccid", iccid, func(c *Config) { c.Share = true })
	reader := e.d.Reader(0)
	waitEvent(t, events, "inserted", kind(Inserted))
	w.present(reader)
	// pcscd powers the card on to read the ATR, and off again at once.
	waitEvent(t, events, "released after the insertion's power cycle", kind(Released))

	// Free between sessions: another user takes it, and it leaves the
	// reader.
	other := e.user(t)
	e.waitSelect(t, other, iccid)
	w.absent(reader)
	ev := waitEvent(t, events, "removed", kind(Removed))
	if !errContains(ev.Err, "in use by another user") {
		t.Errorf("removed because %v", ev.Err)
	}
	other.Close()
	w.present(reader)

	// A session: selected while open, refused to others, released after.
	c := open(t, reader)
	waitEvent(t, events, "selected", kind(Selected))
	transmit(t, c, selectICCID, 0x9000)
	if got := transmit(t, c, readICCID, 0x9000); !bytes.Equal(got, rawICCID(t, iccid)) {
		t.Errorf("EF.ICCID %x", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	third := e.user(t)
	if _, err := third.Select(ctx, "iccid", iccid); !errContains(err, "in use by another user") {
		t.Errorf("select during the PC/SC session: %v, want in use", err)
	}
	c.Close()
	waitEvent(t, events, "released after the session", kind(Released))
	e.waitSelect(t, third, iccid)
}

// TestSamePort: a second bridge on a port whose slot already holds a card
// is not served by vpcd; it says so instead of claiming an inserted card,
// and takes the slot when the first bridge stops.
func TestSamePort(t *testing.T) {
	vpcdSilence = time.Second
	t.Cleanup(func() { vpcdSilence = 5 * time.Second })
	e := newEnv(t, server.Config{})
	e.agentCard(simCard(0, false), "sim reader 0")
	e.agentCard(simCard(1, false), "sim reader 1")
	w := e.watch()
	first, stopFirst := e.startBridge(0, "iccid", simbackend.ICCID(0))
	waitEvent(t, first, "first inserted", kind(Inserted))
	w.present(e.d.Reader(0))
	second := e.bridge(0, "iccid", simbackend.ICCID(1))
	ev := waitEvent(t, second, "second not served", func(ev Event) bool { return ev.Kind == Waiting && errors.Is(ev.Err, vpcd.ErrSilent) })
	if !errContains(ev.Err, "another card in this slot") {
		t.Errorf("waiting because %v", ev.Err)
	}
	stopFirst()
	w.absent(e.d.Reader(0))
	w.present(e.d.Reader(0))
	c := open(t, e.d.Reader(0))
	if err := readICCIDOf(c, simbackend.ICCID(1)); err != nil {
		t.Error(err)
	}
}
