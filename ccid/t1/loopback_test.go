package t1

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

// sent is one block the host handed to the Exchanger.
type sent struct {
	block []byte
	bwi   byte
}

// loop connects a Conn to a CardSide in memory, recording what the host
// sends. It can lose host blocks before they reach the card.
type loop struct {
	card     *CardSide
	sent     []sent
	dropHost int              // lose the next n host blocks
	drop     func(i int) bool // lose host block i (0-based) if it says so
	before   func(i int)      // called before host block i reaches the card
}

func (l *loop) Exchange(ctx context.Context, block []byte, bwi byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.sent = append(l.sent, sent{bytes.Clone(block), bwi})
	i := len(l.sent) - 1
	if l.dropHost > 0 || l.drop != nil && l.drop(i) {
		l.dropHost = max(l.dropHost-1, 0)
		return nil, fmt.Errorf("test reader: %w", ErrNoBlock)
	}
	if l.before != nil {
		l.before(i)
	}
	rx := l.card.HandleBlock(block)
	if rx == nil {
		return nil, fmt.Errorf("test reader: card mute: %w", ErrNoBlock)
	}
	return rx, nil
}

// pcbs lists the PCBs the host sent, for failure messages and checks.
func (l *loop) pcbs() []string {
	var out []string
	for _, s := range l.sent {
		out = append(out, describePCB(s.block[1]))
	}
	return out
}

// apduCard is a simulated card application: it records the commands and
// answers each with rspLen pattern bytes followed by 90 00.
type apduCard struct {
	commands [][]byte
	rspLen   int
}

func (a *apduCard) process(apdu []byte) []byte {
	a.commands = append(a.commands, apdu)
	return append(pattern(a.rspLen, byte(len(a.commands))), 0x90, 0x00)
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) ^ seed
	}
	return p
}

type fixture struct {
	app  *apduCard
	card *CardSide
	loop *loop
	conn *Conn
}

func newFixture(t testing.TB, rspLen int, cc CardConfig, hc Config) *fixture {
	t.Helper()
	app := &apduCard{rspLen: rspLen}
	card := NewCardSide(app.process, cc)
	l := &loop{card: card}
	hc.CRC = cc.CRC
	if hc.IFSC == 0 {
		hc.IFSC = cc.IFSC
	}
	return &fixture{app: app, card: card, loop: l, conn: New(l, hc)}
}

// transmit sends a command of cmdLen bytes and checks the card got it and
// the host got the card's whole answer.
func (f *fixture) transmit(t *testing.T, cmdLen int) {
	t.Helper()
	cmd := pattern(cmdLen, 0xA5)
	n := len(f.app.commands)
	rsp, err := f.conn.Transmit(context.Background(), cmd)
	if err != nil {
		t.Fatalf("Transmit(%d bytes): %v\nhost sent %v", cmdLen, err, f.loop.pcbs())
	}
	if len(f.app.commands) != n+1 || !bytes.Equal(f.app.commands[n], cmd) {
		t.Fatalf("card got %d commands, last %x; want %x", len(f.app.commands)-n, f.app.commands[len(f.app.commands)-1], cmd)
	}
	want := append(pattern(f.app.rspLen, byte(n+1)), 0x90, 0x00)
	if !bytes.Equal(rsp, want) {
		t.Fatalf("response %d bytes %x, want %d bytes %x", len(rsp), rsp, len(want), want)
	}
}

func (f *fixture) noInvalid(t *testing.T) {
	t.Helper()
	if s := f.card.Stats(); s.Invalid != 0 || s.Retransmits != 0 {
		t.Errorf("card stats %+v, want no invalid blocks or retransmissions", s)
	}
}

func TestLoopbackShort(t *testing.T) {
	for _, crc := range []bool{false, true} {
		t.Run(fmt.Sprintf("crc=%v", crc), func(t *testing.T) {
			f := newFixture(t, 4, CardConfig{CRC: crc}, Config{})
			for range 3 { // N(S) toggles on both sides
				f.transmit(t, 5)
			}
			f.noInvalid(t)
			if got := len(f.loop.sent); got != 3 {
				t.Errorf("host sent %d blocks (%v), want 3", got, f.loop.pcbs())
			}
			wantPCB := []byte{0x00, 0x40, 0x00}
			for i, s := range f.loop.sent {
				if s.block[1] != wantPCB[i] {
					t.Errorf("block %d PCB %02X, want %02X", i, s.block[1], wantPCB[i])
				}
			}
		})
	}
}

func TestLoopbackChaining(t *testing.T) {
	for _, ifsc := range []int{32, 254} {
		for _, ifsd := range []int{0, 254, 17} { // 0: not negotiated, the card uses 32
			for _, crc := range []bool{false, true} {
				t.Run(fmt.Sprintf("ifsc=%d/ifsd=%d/crc=%v", ifsc, ifsd, crc), func(t *testing.T) {
					f := newFixture(t, 1000, CardConfig{IFSC: ifsc, CRC: crc}, Config{})
					if ifsd != 0 {
						if err := f.conn.NegotiateIFSD(context.Background(), ifsd); err != nil {
							t.Fatal(err)
						}
					}
					f.transmit(t, 600)
					f.transmit(t, 600)
					f.transmit(t, 3)
					f.noInvalid(t)
					s := f.card.Stats()
					if s.MaxINF != min(ifsc, 600) {
						t.Errorf("card's longest INF %d, want %d", s.MaxINF, min(ifsc, 600))
					}
					wantIFSD := ifsd
					if ifsd == 0 {
						wantIFSD = initialIFS
					}
					if s.IFSD != wantIFSD {
						t.Errorf("card's IFSD %d, want %d", s.IFSD, wantIFSD)
					}
					// Blocks: ceil(600/ifsc) I-blocks plus one R-block per
					// chained response block, for each long exchange.
					cmdBlocks := (600 + ifsc - 1) / ifsc
					rspBlocks := (1002 + wantIFSD - 1) / wantIFSD
					want := 2*(cmdBlocks+rspBlocks-1) + rspBlocks
					if ifsd != 0 {
						want++ // S(IFS request)
					}
					if got := len(f.loop.sent); got != want {
						t.Errorf("host sent %d blocks, want %d", got, want)
					}
				})
			}
		}
	}
}

func TestLoopbackWTX(t *testing.T) {
	f := newFixture(t, 300, CardConfig{IFSC: 64, WTXEvery: 1, WTXMultiplier: 5}, Config{})
	f.transmit(t, 100)
	if s := f.card.Stats(); s.WTXRequests != 2 { // one per I-block received
		t.Errorf("card sent %d WTX requests, want 2", s.WTXRequests)
	}
	var wtx int
	for _, s := range f.loop.sent {
		isResp := s.block[1] == pcbS|sResponse|sWTX
		if isResp {
			wtx++
			if s.block[3] != 5 {
				t.Errorf("S(WTX response) carries %d, want 5", s.block[3])
			}
		}
		if isResp != (s.bwi == 5) || !isResp && s.bwi != 0 {
			t.Errorf("%v sent with BWI multiplier %d", describePCB(s.block[1]), s.bwi)
		}
	}
	if wtx != 2 {
		t.Errorf("host sent %d S(WTX response)s, want 2", wtx)
	}
	f.noInvalid(t)
}

func TestLoopbackInjectedWTX(t *testing.T) {
	f := newFixture(t, 10, CardConfig{}, Config{})
	f.card.InjectWTX(200)
	f.card.InjectWTX(3)
	f.transmit(t, 10)
	want := []string{"I(0,0)", "S(WTX response)", "S(WTX response)"}
	if got := f.loop.pcbs(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("host sent %v, want %v", got, want)
	}
	if f.loop.sent[1].bwi != 200 || f.loop.sent[2].bwi != 3 {
		t.Errorf("BWI multipliers %d, %d; want 200, 3", f.loop.sent[1].bwi, f.loop.sent[2].bwi)
	}
}

func TestLoopbackIFS(t *testing.T) {
	t.Run("host", func(t *testing.T) {
		f := newFixture(t, 1000, CardConfig{IFSC: 254}, Config{IFSD: 100})
		if err := f.conn.NegotiateIFSD(context.Background(), 64); err != nil {
			t.Fatal(err)
		}
		if f.conn.ifsd != 64 || f.card.Stats().IFSD != 64 {
			t.Fatalf("IFSD host %d card %d, want 64", f.conn.ifsd, f.card.Stats().IFSD)
		}
		f.transmit(t, 5)
		f.noInvalid(t)
	})
	t.Run("card", func(t *testing.T) {
		f := newFixture(t, 10, CardConfig{IFSC: 254}, Config{})
		f.card.InjectIFSRequest(16)
		f.transmit(t, 600) // first block 254 bytes, then the card asks for 16
		if f.conn.ifsc != 16 {
			t.Errorf("host IFSC %d, want 16", f.conn.ifsc)
		}
		for i, s := range f.loop.sent[2:] {
			if s.block[2] > 16 {
				t.Errorf("block %d after S(IFS response) has LEN %d", i+2, s.block[2])
			}
		}
		if want := 1 + 1 + (600-254+15)/16; len(f.loop.sent) != want {
			t.Errorf("host sent %d blocks, want %d", len(f.loop.sent), want)
		}
		f.noInvalid(t)
		// RESYNCH puts IFSC back to the ATR's value.
		if err := f.conn.Resync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if f.conn.ifsc != 254 {
			t.Errorf("host IFSC after RESYNCH %d, want 254", f.conn.ifsc)
		}
		f.transmit(t, 600)
		f.noInvalid(t)
	})
}

// Each fault is repaired by retransmission; the card never sees the same
// command twice.
func TestLoopbackRecovery(t *testing.T) {
	tests := []struct {
		name   string
		rspLen int
		inject func(f *fixture)
		// firstNAK is the first R-block the host must send (its PCB).
		firstNAK byte
	}{
		{"EDC error on answer", 4, func(f *fixture) { f.card.InjectEDCError(1) }, pcbR | rEDCError},
		{"EDC error twice", 4, func(f *fixture) { f.card.InjectEDCError(2) }, pcbR | rEDCError},
		{"EDC error in chain", 600, func(f *fixture) { f.card.InjectEDCError(1) }, pcbR | rEDCError},
		{"answer lost", 4, func(f *fixture) { f.card.InjectMute(1) }, pcbR | rOther},
		{"answer lost in chain", 600, func(f *fixture) { f.card.InjectMute(1) }, pcbR | rOther},
		{"host block lost", 4, func(f *fixture) { f.loop.dropHost = 1 }, pcbR | rOther},
		{"bad N(S)", 4, func(f *fixture) { f.card.InjectBadSequence() }, pcbR | rOther},
		{"bad N(S) in chain", 600, func(f *fixture) { f.card.InjectBadSequence() }, pcbR | rOther},
	}
	for _, tt := range tests {
		for _, cmdLen := range []int{5, 100} {
			t.Run(fmt.Sprintf("%s/cmd=%d", tt.name, cmdLen), func(t *testing.T) {
				f := newFixture(t, tt.rspLen, CardConfig{}, Config{})
				f.transmit(t, 5) // start from N(S) = 1 on both sides
				f.loop.sent = nil
				tt.inject(f)
				f.transmit(t, cmdLen)
				var nak byte
				for _, s := range f.loop.sent {
					if kindOf(s.block[1]) == kindR && s.block[1]&rErrMask != 0 {
						nak = s.block[1] &^ rSeq
						break
					}
				}
				if nak != tt.firstNAK {
					t.Errorf("first error R-block %02X, want %02X; host sent %v", nak, tt.firstNAK, f.loop.pcbs())
				}
				if s := f.card.Stats(); s.Resyncs != 0 || s.Commands != 2 {
					t.Errorf("card stats %+v, want 2 commands and no RESYNCH", s)
				}
				f.transmit(t, 5)
			})
		}
	}
}

// Losing the card's chain acknowledgement or the host's makes both sides
// repeat themselves, not skip data.
func TestLoopbackLostAcks(t *testing.T) {
	t.Run("card ack", func(t *testing.T) {
		f := newFixture(t, 4, CardConfig{}, Config{})
		f.card.InjectMute(1) // the R-block acknowledging the first chained block
		f.transmit(t, 100)
		if got := fmt.Sprint(f.loop.pcbs()); got != "[I(0,1) R(0) other error I(1,1) I(0,1) I(1,0)]" {
			t.Errorf("host sent %v", got)
		}
	})
	t.Run("host ack", func(t *testing.T) {
		f := newFixture(t, 100, CardConfig{}, Config{})
		f.transmit(t, 5) // card chains 102 bytes in 32-byte blocks
		f.loop.sent = nil
		// Lose the host's first acknowledgement on the way to the card.
		f.loop.drop = func(i int) bool { return i == 1 }
		f.transmit(t, 5)
		if got := fmt.Sprint(f.loop.pcbs()); got != "[I(1,0) R(1) R(1) R(0) R(1)]" {
			t.Errorf("host sent %v", got)
		}
	})
}

func TestLoopbackResync(t *testing.T) {
	t.Run("repeated errors", func(t *testing.T) {
		f := newFixture(t, 4, CardConfig{}, Config{})
		f.transmit(t, 5)
		f.loop.sent = nil
		f.card.InjectEDCError(4) // answer and three retransmissions
		_, err := f.conn.Transmit(context.Background(), []byte{1, 2, 3, 4, 5})
		if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrResyncFailed) {
			t.Fatalf("Transmit error %v, want ErrProtocol after a successful resync", err)
		}
		var be *BlockError
		if !errors.As(err, &be) || !be.EDC {
			t.Errorf("error %v does not carry the EDC BlockError", err)
		}
		want := "[I(1,0) R(1) EDC error R(1) EDC error R(1) EDC error S(RESYNCH request)]"
		if got := fmt.Sprint(f.loop.pcbs()); got != want {
			t.Errorf("host sent %v, want %v", got, want)
		}
		if s := f.card.Stats(); s.Resyncs != 1 {
			t.Errorf("card saw %d resyncs", s.Resyncs)
		}
		if f.conn.ns != 0 || f.conn.nr != 0 || f.conn.needResync {
			t.Errorf("after RESYNCH ns=%d nr=%d needResync=%v", f.conn.ns, f.conn.nr, f.conn.needResync)
		}
		f.transmit(t, 5) // starts again at N(S) = 0
		if got := f.loop.sent[len(f.loop.sent)-1].block[1]; got != 0x00 {
			t.Errorf("first block after RESYNCH has PCB %02X", got)
		}
	})
	t.Run("card keeps asking", func(t *testing.T) {
		// A card that NAKs every block forever: R(0) is a valid request to
		// repeat I(0,0), but repeats count as errors too.
		x := &scripted{t: t}
		for range 4 {
			x.steps = append(x.steps, step{recv: "00 80 00 80"})
		}
		x.steps = append(x.steps, step{recv: "00 E0 00 E0"})
		c := New(x, Config{})
		_, err := c.Transmit(context.Background(), []byte{0, 0xB0, 0, 0, 0})
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
	})
	t.Run("resync fails", func(t *testing.T) {
		f := newFixture(t, 4, CardConfig{}, Config{})
		f.card.InjectEDCError(4 + resyncAttempts)
		_, err := f.conn.Transmit(context.Background(), []byte{1, 2, 3, 4, 5})
		if !errors.Is(err, ErrResyncFailed) || !errors.Is(err, ErrProtocol) {
			t.Fatalf("Transmit error %v, want ErrResyncFailed wrapping the EDC error", err)
		}
		if !f.conn.needResync {
			t.Error("needResync not set")
		}
		f.transmit(t, 5) // resynchronises first
		if s := f.card.Stats(); s.Resyncs != resyncAttempts+1 {
			t.Errorf("card saw %d resyncs, want %d", s.Resyncs, resyncAttempts+1)
		}
	})
}

func TestLoopbackAbort(t *testing.T) {
	for _, tt := range []struct {
		name           string
		cmdLen, rspLen int
	}{
		{"command chain", 100, 4},
		{"response chain", 5, 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.rspLen, CardConfig{}, Config{})
			// Abort on the card's answer to the host's second block: a
			// chained I-block or the acknowledgement of the first
			// response block.
			f.loop.before = func(i int) {
				if i == 1 {
					f.card.InjectAbort()
				}
			}
			_, err := f.conn.Transmit(context.Background(), pattern(tt.cmdLen, 1))
			if !errors.Is(err, ErrAborted) {
				t.Fatalf("Transmit error %v, want ErrAborted", err)
			}
			if s := f.card.Stats(); s.Aborts != 1 {
				t.Errorf("card saw %d aborts", s.Aborts)
			}
			if last := f.loop.sent[len(f.loop.sent)-1].block[1]; last != pcbS|sResponse|sAbort {
				t.Errorf("last block sent %v, want S(ABORT response)", describePCB(last))
			}
			f.loop.sent, f.loop.before = nil, nil
			f.transmit(t, 5)
			if first := f.loop.sent[0].block[1]; first != pcbS|sResynch {
				t.Errorf("first block after abort %v, want S(RESYNCH request)", describePCB(first))
			}
		})
	}
}

func TestLoopbackCardResetAfterResync(t *testing.T) {
	// A card reset (new ATR) and a new Conn start from scratch.
	f := newFixture(t, 4, CardConfig{}, Config{})
	f.transmit(t, 5)
	f.card.Reset()
	f.conn = New(f.loop, Config{})
	f.transmit(t, 5)
	f.noInvalid(t)
}

func TestLoopbackNAD(t *testing.T) {
	f := newFixture(t, 40, CardConfig{}, Config{NAD: 0x12})
	f.transmit(t, 40)
	for _, s := range f.loop.sent {
		if s.block[0] != 0x12 {
			t.Errorf("host sent NAD %02X", s.block[0])
		}
	}
	f.noInvalid(t)
}
