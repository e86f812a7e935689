package pcscchain

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/agent/pcscbackend"
	"github.com/wsrc-go/wsrc/agent/simbackend"
	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/internal/vpcd"
	"github.com/wsrc-go/wsrc/protocol"
)

// simCard is simulated card number i (ICCID and EID of simbackend's card
// i) with the given protocol options.
func simCard(i int, p sim.Protocol, getResponse bool) *sim.Card {
	return sim.New(sim.Config{ICCID: simbackend.ICCID(i), EID: simbackend.EID(i), Protocol: p, T0GetResponse: getResponse})
}

// TestIdentification: a card inserted into a reader is identified by the
// server through agent, pcscd and vpcd; list_cards shows its ICCID, EID,
// ATR, reader and agent. A plain UICC (no ISD-R) has no EID.
func TestIdentification(t *testing.T) {
	c := newChain(t)
	euicc := simCard(0, sim.T0, false)
	uicc := sim.New(sim.Config{ICCID: simbackend.ICCID(1), EID: sim.NoEID, Protocol: sim.T1})
	c.insert(0, euicc)
	c.insert(1, uicc)
	c.waitReady(euicc.Identity().ICCID)
	c.waitReady(uicc.Identity().ICCID)

	cards, err := c.dial().ListCards(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		c   *sim.Card
		atr []byte
	}{{euicc, sim.ATRT0}, {uicc, sim.ATRT1}} {
		id := want.c.Identity()
		ci, ok := findCard(cards, id.ICCID)
		if !ok {
			t.Fatalf("list_cards lacks ICCID %s: %+v", id.ICCID, cards)
		}
		wantIDs := protocol.Identities{protocol.IdentityATR: hex.EncodeToString(want.atr), protocol.IdentityICCID: id.ICCID}
		if id.EID != "" {
			wantIDs[protocol.IdentityEID] = id.EID
		}
		if fmt.Sprint(ci.Identities) != fmt.Sprint(wantIDs) || ci.State != "ready" ||
			ci.Reader != c.d.Reader(i) || ci.Agent != "pcscchain" {
			t.Errorf("card %d listed as %+v, want identities %v in reader %q", i, ci, wantIDs, c.d.Reader(i))
		}
	}
}

// TestAPDURelay relays short and extended APDUs between a user and cards
// of each kind: T=0, T=0 answering 61xx/6Cxx (GET RESPONSE), and T=1. The
// responses of 4000 and 256 bytes and the 300-byte command do not fit a
// short APDU's limits.
func TestAPDURelay(t *testing.T) {
	c := newChain(t)
	for i, v := range []struct {
		name        string
		proto       sim.Protocol
		getResponse bool
	}{
		{"T=0", sim.T0, false},
		{"T=0 GET RESPONSE", sim.T0, true},
		{"T=1", sim.T1, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			sc := simCard(i, v.proto, v.getResponse)
			iccid := sc.Identity().ICCID
			slot := c.insert(0, sc)
			c.waitReady(iccid)
			u := c.selectCard(iccid)

			if fcp := transmit(t, u, selectMF, 0x9000); len(fcp) == 0 || fcp[0] != 0x62 {
				t.Errorf("SELECT MF answered FCP %x", fcp)
			}
			transmit(t, u, selectICCID, 0x9000)
			raw, err := card.EncodeICCID(iccid)
			if err != nil {
				t.Fatal(err)
			}
			if got := transmit(t, u, mustHex("00b000000a"), 0x9000); !bytes.Equal(got, raw) {
				t.Errorf("EF.ICCID %x, want %x", got, raw)
			}

			transmit(t, u, selectBig, 0x9000)
			if got := transmit(t, u, readBinaryExt(0, sim.BigEFSize), 0x9000); !bytes.Equal(got, bigEF(0, sim.BigEFSize)) {
				t.Errorf("extended READ BINARY: %d bytes, want the %d of EF 6F99", len(got), sim.BigEFSize)
			}
			if got := transmit(t, u, mustHex("00b0000000"), 0x9000); !bytes.Equal(got, bigEF(0, 256)) {
				t.Errorf("short READ BINARY Le=256: %d bytes %x", len(got), got)
			}
			data := bytes.Repeat([]byte{0xa5, 0x5a, byte(i)}, 100)
			transmit(t, u, updateBinaryExt(100, data), 0x9000)
			if got := transmit(t, u, readBinaryExt(100, len(data)), 0x9000); !bytes.Equal(got, data) {
				t.Errorf("read back %x, want %x", got, data)
			}
			if got := transmit(t, u, readBinaryExt(0, 100), 0x9000); !bytes.Equal(got, bigEF(0, 100)) {
				t.Errorf("bytes before the update changed: %x", got)
			}
			// An error status word is relayed as it is.
			transmit(t, u, mustHex("00a40000021234"), 0x6a82)

			u.Close()
			slot.Remove()
			c.waitGone(iccid)
		})
	}
}

// TestT0GetResponse: on a card that answers like a real T=0 card, the
// agent fetches data announced with 61xx by GET RESPONSE and re-issues a
// command refused with 6Cxx, through PC/SC; the user sees only the final
// answers, and the card saw every step.
func TestT0GetResponse(t *testing.T) {
	c := newChain(t)
	rc := &recordingCard{Card: simCard(0, sim.T0, true)}
	iccid := rc.Identity().ICCID
	c.insert(0, rc)
	c.waitReady(iccid)
	u := c.selectCard(iccid)

	n := rc.count()
	fcp := transmit(t, u, selectMF, 0x9000)
	seen := rc.since(n)
	if len(seen) != 2 || !bytes.Equal(seen[0], selectMF) || !bytes.Equal(seen[1], []byte{0x00, 0xc0, 0x00, 0x00, byte(len(fcp))}) {
		t.Errorf("SELECT MF with FCP (%d bytes) reached the card as %x, want it and GET RESPONSE", len(fcp), seen)
	}

	transmit(t, u, mustHex("00a4000c022fe2"), 0x9000)
	n = rc.count()
	got := transmit(t, u, mustHex("00b0000000"), 0x9000) // Le 256 for a 10-byte EF: 6C0A
	seen = rc.since(n)
	if len(got) != 10 || len(seen) != 2 || !bytes.Equal(seen[0], mustHex("00b0000000")) || !bytes.Equal(seen[1], mustHex("00b000000a")) {
		t.Errorf("READ BINARY Le=256 of EF.ICCID gave %x; the card saw %x, want it re-issued with Le=0a", got, seen)
	}
}

// TestResetNewATR: a user's reset reaches the card as a warm reset, and
// the user gets the card's new ATR in reset_resp. The session goes on.
func TestResetNewATR(t *testing.T) {
	c := newChain(t)
	bc := vpcd.NewResetRecorder(simCard(0, sim.T1, false))
	iccid := bc.Identity().ICCID
	atr0 := bc.ATR()
	c.insert(0, bc)
	ci := c.waitReady(iccid)
	if ci.Identities[protocol.IdentityATR] != hex.EncodeToString(atr0) {
		t.Fatalf("listed ATR %s, want %x", ci.Identities[protocol.IdentityATR], atr0)
	}
	u := c.selectCard(iccid)
	transmit(t, u, selectBig, 0x9000)

	prev := atr0
	for i := range 2 {
		before := len(bc.Resets())
		atr, err := u.Reset(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(atr, prev) || !bytes.Equal(atr, bc.ATR()) {
			t.Errorf("reset %d: ATR %x (before %x), the card's is now %x", i, atr, prev, bc.ATR())
		}
		if kinds := bc.Resets()[before:]; !slices.Equal(kinds, []card.ResetKind{card.WarmReset}) {
			t.Errorf("reset %d reached the card as %v, want one warm reset", i, kinds)
		}
		prev = atr
		// The reset selected the MF again: EF 6F99 must be selected anew.
		transmit(t, u, mustHex("00b0000010"), 0x6986)
		transmit(t, u, selectBig, 0x9000)
		if got := transmit(t, u, readBinaryExt(0, 300), 0x9000); !bytes.Equal(got, bigEF(0, 300)) {
			t.Errorf("after reset %d: READ BINARY %x", i, got)
		}
	}
	// Still the same session: the card connection has not changed.
	if now, ok := findCard(c.srv.Cards(), iccid); !ok || now.RemoteAddr != ci.RemoteAddr || now.State != "associated" {
		t.Errorf("after the resets the card is listed as %+v (ok %v), want the session of %+v", now, ok, ci)
	}
}

// TestRemovalMidSession: pulling the card while a user holds it gives the
// user an error at its next APDU (not a timeout), the card leaves the list
// and the user's connection stays usable.
func TestRemovalMidSession(t *testing.T) {
	c := newChain(t)
	sc := simCard(0, sim.T0, false)
	iccid := sc.Identity().ICCID
	slot := c.insert(0, sc)
	c.waitReady(iccid)
	u := c.selectCard(iccid)
	transmit(t, u, selectMF, 0x9000)

	slot.Remove()
	start := time.Now()
	_, _, err := u.Transmit(context.Background(), selectMF)
	// Either the agent's transmit failed on the pulled card ("card agent
	// error: ... card removed") or the agent had already closed the
	// session on pcscd's removal event ("card disconnected").
	serverError(t, err, "card")
	t.Logf("APDU after removal: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	c.waitGone(iccid)

	cards, err := u.ListCards(context.Background())
	if err != nil {
		t.Fatalf("list_cards after removal: %v", err)
	}
	if _, ok := findCard(cards, iccid); ok {
		t.Errorf("removed card still listed: %+v", cards)
	}
	c.checkAgentRunning()
}

// pullingCard is a simulated card that is pulled while it processes an
// APDU, once armed: it closes its vpcd connection and then answers, so
// the answer is lost and pcscd's driver fails the APDU in flight.
type pullingCard struct {
	*sim.Card
	conn  net.Conn
	armed atomic.Bool
}

func (p *pullingCard) Process(cmd []byte) []byte {
	if p.armed.CompareAndSwap(true, false) {
		p.conn.Close()
	}
	return p.Card.Process(cmd)
}

// TestRemovalDuringAPDU: the card is pulled while the user's APDU is at
// the card. The user gets the error promptly, without waiting for the
// agent's reader watcher: the watcher's poll timeout is an hour, so its
// wait that follows the removal event ends long after this test. Before
// the fix, the pcsc card's removal check waited for the lock the watcher
// holds during that wait (ebfe/scard's GetStatusChange is serialised),
// and the user's answer came only when the wait ended (2 s by default);
// with an hour, the APDU would hit the user's request timeout instead of
// getting the server's error.
func TestRemovalDuringAPDU(t *testing.T) {
	c := newChain(t, func(b *pcscbackend.Config) { b.PollTimeout = time.Hour })
	pc := &pullingCard{Card: simCard(0, sim.T0, false)}
	iccid := pc.Identity().ICCID
	conn, err := net.Dial("tcp", c.d.SlotAddr(0))
	if err != nil {
		t.Fatal(err)
	}
	pc.conn = conn
	served := make(chan struct{})
	go func() {
		defer close(served)
		vpcd.ServeConn(context.Background(), conn, pc) //nolint:errcheck // the pull breaks the connection
	}()
	t.Cleanup(func() { conn.Close(); <-served })

	c.waitReady(iccid)
	u := c.selectCard(iccid)
	transmit(t, u, selectMF, 0x9000)

	pc.armed.Store(true)
	start := time.Now()
	_, _, err = u.Transmit(context.Background(), selectMF)
	// The agent's transmit failed on the pulled card ("card agent error:
	// ... card removed"), or the agent closed the session on pcscd's
	// removal event while the transmit was failing ("card disconnected").
	serverError(t, err, "card")
	t.Logf("APDU in flight when the card was pulled: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	if pc.armed.Load() {
		t.Fatal("the APDU never reached the card")
	}
	<-served
	c.waitGone(iccid)
	c.checkAgentRunning()
}

// TestReinsertion: a card put back after removal is identified afresh and
// usable; another card in the same reader is identified as itself.
func TestReinsertion(t *testing.T) {
	c := newChain(t)
	a, b := simCard(0, sim.T0, false), simCard(1, sim.T1, false)
	iccidA, iccidB := a.Identity().ICCID, b.Identity().ICCID
	slot := c.insert(0, a)
	first := c.waitReady(iccidA)

	slot.Remove()
	c.waitGone(iccidA)
	if err := slot.Insert(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if ci := c.waitReady(iccidB); ci.Identities[protocol.IdentityEID] != b.Identity().EID || ci.Reader != c.d.Reader(0) {
		t.Errorf("second card listed as %+v", ci)
	}
	if _, ok := findCard(c.srv.Cards(), iccidA); ok {
		t.Error("the first card is listed again though it is out")
	}

	slot.Remove()
	c.waitGone(iccidB)
	if err := slot.Insert(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	again := c.waitReady(iccidA, first.RemoteAddr)
	if again.Identities[protocol.IdentityEID] != a.Identity().EID {
		t.Errorf("re-inserted card listed as %+v", again)
	}
	u := c.selectCard(iccidA)
	transmit(t, u, selectMF, 0x9000)
}

// TestTwoReaders: cards in two readers are served at once, each to its
// own user, with APDUs in flight on both at the same time.
func TestTwoReaders(t *testing.T) {
	c := newChain(t)
	cards := []*sim.Card{simCard(0, sim.T0, true), simCard(1, sim.T1, false)}
	users := make([]*client.Client, len(cards))
	for i, sc := range cards {
		c.insert(i, sc)
	}
	for i, sc := range cards {
		ci := c.waitReady(sc.Identity().ICCID)
		if ci.Reader != c.d.Reader(i) {
			t.Errorf("card %d in reader %q, want %q", i, ci.Reader, c.d.Reader(i))
		}
		users[i] = c.selectCard(sc.Identity().ICCID)
	}

	// Each user writes its own pattern into its card's EF 6F99 and reads
	// it back, over and over, both at once.
	var wg sync.WaitGroup
	errs := make(chan error, len(users))
	for i, u := range users {
		wg.Go(func() {
			errs <- exercise(u, byte(0x10*(i+1)))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// exercise writes 300 bytes of pattern into EF 6F99 and reads the whole EF
// back, ten times, checking every answer.
func exercise(u *client.Client, pattern byte) error {
	ctx := context.Background()
	want := bigEF(0, sim.BigEFSize)
	for round := range 10 {
		data := bytes.Repeat([]byte{pattern + byte(round)}, 300)
		copy(want[1000:], data)
		for _, cmd := range [][]byte{selectBig, updateBinaryExt(1000, data)} {
			if _, sw, err := u.Transmit(ctx, cmd); err != nil || sw != 0x9000 {
				return fmt.Errorf("pattern %02x round %d: APDU %x: SW %04x, %v", pattern, round, cmd[:4], sw, err)
			}
		}
		got, sw, err := u.Transmit(ctx, readBinaryExt(0, sim.BigEFSize))
		if err != nil || sw != 0x9000 || !bytes.Equal(got, want) {
			return fmt.Errorf("pattern %02x round %d: READ BINARY: %d bytes, SW %04x, %v", pattern, round, len(got), sw, err)
		}
	}
	return nil
}

// runCard keeps c in vpcd reader i with vpcd.Run, reconnecting when pcscd
// restarts (as cmd/wsrc-vcard does); the test's cleanup stops it.
func (c *chain) runCard(i int, card vpcd.Card) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		vpcd.Run(ctx, c.d.SlotAddr(i), card, vpcd.RunOptions{
			Logger:     slog.New(slog.DiscardHandler),
			MinBackoff: 20 * time.Millisecond,
			MaxBackoff: 200 * time.Millisecond,
		})
	}()
	c.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// TestPcscdRestart: when pcscd stops, every card leaves the list and a
// user holding one gets "card disconnected"; the agent keeps running and,
// when pcscd is back, the cards are identified again in fresh sessions.
// The same after a quick restart.
func TestPcscdRestart(t *testing.T) {
	c := newChain(t)
	cards := []*sim.Card{simCard(0, sim.T0, false), simCard(1, sim.T1, false)}
	for i, sc := range cards {
		c.runCard(i, sc)
	}
	iccid := func(i int) string { return cards[i].Identity().ICCID }
	old := map[int][]protocol.RemoteAddr{}
	waitAll := func() {
		t.Helper()
		for i := range cards {
			ci := c.waitReady(iccid(i), old[i]...)
			old[i] = append(old[i], ci.RemoteAddr)
		}
	}
	waitAll()
	u := c.selectCard(iccid(0))
	transmit(t, u, selectMF, 0x9000)

	// pcscd stops: the cards go.
	c.d.Stop()
	for i := range cards {
		c.waitGone(iccid(i))
	}
	_, _, err := u.Transmit(context.Background(), selectMF)
	serverError(t, err, "card disconnected")
	c.checkAgentRunning()

	// pcscd starts again: the cards come back, identified afresh.
	c.d.StartAgain()
	waitAll()
	if _, err := u.Select(context.Background(), "iccid", iccid(0)); err != nil {
		t.Fatal(err)
	}
	transmit(t, u, selectBig, 0x9000)
	transmit(t, u, readBinaryExt(0, 300), 0x9000)

	// A quick restart: new sessions replace the old ones.
	c.d.Restart()
	waitAll()
	_, _, err = u.Transmit(context.Background(), selectMF)
	serverError(t, err, "card disconnected")
	for i := range cards {
		v := c.selectCard(iccid(i))
		// Identification leaves its last file selected (EF.DIR since
		// the IMSI step): select the big EF first.
		transmit(t, v, selectBig, 0x9000)
		if got := transmit(t, v, readBinaryExt(0, 4000), 0x9000); !bytes.Equal(got, bigEF(0, 4000)) {
			t.Errorf("card %d: extended READ BINARY gave %d bytes", i, len(got))
		}
	}
	c.checkAgentRunning()
}
