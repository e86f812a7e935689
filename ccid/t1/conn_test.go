package t1

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// step is one exchange of a script: what the host must send, and what the
// card answers.
type step struct {
	send string // hex the host must send; "" accepts anything
	bwi  byte   // BWI multiplier the host must pass
	recv string // hex of the card's answer
	err  error  // or the reader's error
}

var errScriptEnd = errors.New("script ended")

// scripted plays a card from a script and checks every block the host
// sends against it.
type scripted struct {
	t     testing.TB
	steps []step
	i     int
}

func (s *scripted) Exchange(_ context.Context, block []byte, bwi byte) ([]byte, error) {
	s.t.Helper()
	if s.i >= len(s.steps) {
		s.t.Errorf("host sent %X after the script ended", block)
		return nil, errScriptEnd
	}
	st := s.steps[s.i]
	s.i++
	if st.send != "" && !bytes.Equal(block, unhex(s.t, st.send)) {
		s.t.Errorf("step %d: host sent %X (%v), want %s", s.i-1, block, describePCB(block[1]), st.send)
	}
	if bwi != st.bwi {
		s.t.Errorf("step %d: BWI multiplier %d, want %d", s.i-1, bwi, st.bwi)
	}
	if st.err != nil {
		return nil, st.err
	}
	return unhex(s.t, st.recv), nil
}

func (s *scripted) finished() {
	s.t.Helper()
	if s.i != len(s.steps) {
		s.t.Errorf("script stopped after %d of %d steps", s.i, len(s.steps))
	}
}

// runScript sends the test APDU to a card playing steps.
func runScript(t *testing.T, cfg Config, steps ...step) ([]byte, error) {
	t.Helper()
	x := &scripted{t: t, steps: steps}
	rsp, err := New(x, cfg).Transmit(context.Background(), unhex(t, apduHex))
	x.finished()
	return rsp, err
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// Blocks used by the scripts. The APDU is READ BINARY of two bytes, the
// response 12 34 90 00; LRCs computed by hand.
const (
	apduHex   = "00B0000002"
	rspHex    = "12349000"
	hostI0    = "00 00 05 00B0000002 B7" // I(0,0) carrying the APDU
	cardI0    = "00 00 04 12349000 B2"   // I(0,0) carrying the response
	cardI0Bad = "00 00 04 12349000 00"   // the same with a wrong LRC
	r0EDC     = "00 81 00 81"            // R(0) EDC error
	r0Other   = "00 82 00 82"            // R(0) other error
	r1        = "00 90 00 90"            // R(1)
	resynReq  = "00 C0 00 C0"
	resynResp = "00 E0 00 E0"
)

// Scenarios after ISO/IEC 7816-3 Annex A, rebuilt from the rules: the
// exact bytes each side sends.
func TestAnnexAScenarios(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		steps   []step
		wantErr error
	}{
		{"I-block exchange", Config{}, []step{
			{send: hostI0, recv: cardI0},
		}, nil},
		{"chained response", Config{}, []step{
			{send: hostI0, recv: "00 20 02 1234 04"}, // I(0,1)
			{send: r1, recv: "00 40 02 9000 D2"},     // R(1); I(1,0)
		}, nil},
		{"chained command, IFSC 3", Config{IFSC: 3}, []step{
			{send: "00 20 03 00B000 93", recv: r1},   // I(0,1); R(1)
			{send: "00 40 02 0002 40", recv: cardI0}, // I(1,0)
		}, nil},
		{"chained both ways, IFSC 3", Config{IFSC: 3}, []step{
			{send: "00 20 03 00B000 93", recv: r1},
			{send: "00 40 02 0002 40", recv: "00 20 02 1234 04"},
			{send: r1, recv: "00 40 02 9000 D2"},
		}, nil},
		{"WTX", Config{}, []step{
			{send: hostI0, recv: "00 C3 01 03 C1"},         // S(WTX request 3)
			{send: "00 E3 01 03 E1", bwi: 3, recv: cardI0}, // S(WTX response 3)
		}, nil},
		{"card changes IFSC", Config{IFSC: 3}, []step{
			{send: "00 20 03 00B000 93", recv: "00 C1 01 10 D0"}, // S(IFS request 16)
			{send: "00 E1 01 10 F0", recv: r1},                   // S(IFS response 16); R(1)
			{send: "00 40 02 0002 40", recv: cardI0},
		}, nil},
		{"card changes IFSC, then asks again", Config{IFSC: 3}, []step{
			{send: "00 20 03 00B000 93", recv: "00 C1 01 10 D0"},
			{send: "00 E1 01 10 F0", recv: "00 80 00 80"}, // R(0): I(0) again, cut to the new IFSC
			{send: hostI0, recv: cardI0},
		}, nil},
		{"EDC error in the card's block", Config{}, []step{
			{send: hostI0, recv: cardI0Bad},
			{send: r0EDC, recv: cardI0},
		}, nil},
		{"card reports EDC error", Config{}, []step{
			{send: hostI0, recv: r0EDC},
			{send: hostI0, recv: cardI0},
		}, nil},
		{"card's block lost", Config{}, []step{
			{send: hostI0, err: fmt.Errorf("reader: %w", ErrNoBlock)},
			{send: r0Other, recv: cardI0},
		}, nil},
		{"parity error", Config{}, []step{
			{send: hostI0, err: fmt.Errorf("reader: %w", ErrParity)},
			{send: r0EDC, recv: cardI0},
		}, nil},
		{"error after an R-block repeats it (rule 7.2)", Config{}, []step{
			{send: hostI0, recv: "00 20 02 1234 04"},
			{send: r1, recv: "00 40 02 9000 00"},
			{send: r1, recv: "00 40 02 9000 D2"},
		}, nil},
		{"R-block from the card while it answers: repeat the acknowledgement", Config{}, []step{
			{send: hostI0, recv: "00 20 02 1234 04"},
			{send: r1, recv: "00 80 00 80"},
			{send: r1, recv: "00 40 02 9000 D2"},
		}, nil},
		{"error after an error R-block repeats it", Config{}, []step{
			{send: hostI0, recv: cardI0Bad},
			{send: r0EDC, err: ErrNoBlock},
			{send: r0EDC, recv: cardI0},
		}, nil},
		{"resynchronisation after three retries", Config{}, []step{
			{send: hostI0, recv: cardI0Bad},
			{send: r0EDC, recv: cardI0Bad},
			{send: r0EDC, recv: cardI0Bad},
			{send: r0EDC, recv: cardI0Bad},
			{send: resynReq, recv: resynResp},
		}, ErrProtocol},
		{"resynchronisation fails", Config{MaxRetries: 1}, []step{
			{send: hostI0, recv: cardI0Bad},
			{send: r0EDC, recv: cardI0Bad},
			{send: resynReq, recv: r0Other},
			{send: resynReq, err: ErrNoBlock},
			{send: resynReq, recv: "00 E0 00 00"},
		}, ErrResyncFailed},
		{"card aborts", Config{}, []step{
			{send: hostI0, recv: "00 C2 00 C2"},        // S(ABORT request)
			{send: "00 E2 00 E2", recv: "00 80 00 80"}, // S(ABORT response)
		}, ErrAborted},
		{"NAD", Config{NAD: 0x12}, []step{
			{send: "12 00 05 00B0000002 A5", recv: "21 00 04 12349000 93"},
		}, nil},
		{"CRC", Config{CRC: true}, []step{
			{send: "00 00 05 00B0000002 2A85", recv: "00 00 04 12349000 0000"},
			{send: "00 81 00 AC27", recv: "00 00 04 12349000 58DA"},
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rsp, err := runScript(t, tt.cfg, tt.steps...)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rsp, unhex(t, rspHex)) {
				t.Errorf("response %X, want %s", rsp, rspHex)
			}
		})
	}
}

// Every kind of invalid block gets the R-block rule 7.1 asks for, and the
// exchange recovers when the card repeats its block properly.
func TestInvalidBlocks(t *testing.T) {
	tests := []struct {
		name string
		recv string
		nak  string
	}{
		{"wrong LRC", cardI0Bad, r0EDC},
		{"too short", "00 00", r0Other},
		{"empty", "", r0Other},
		{"LEN 0xFF", "00 00 FF 12349000 00", r0Other},
		{"LEN too long", "00 00 05 12349000 B3", r0Other},
		{"LEN too short", "00 00 03 12349000 B1", r0Other},
		{"wrong NAD", "21 00 04 12349000 93", r0Other},
		{"I-block reserved bits", "00 01 04 12349000 B3", r0Other},
		{"I-block wrong N(S)", "00 40 04 12349000 F2", r0Other},
		{"R-block with INF", "00 90 01 00 91", r0Other},
		{"R-block reserved bit", "00 A0 00 A0", r0Other},
		{"R-block reserved error code", "00 83 00 83", r0Other},
		{"R-block acknowledging an unchained block", r1, r0Other},
		{"S-block unknown type", "00 C5 00 C5", r0Other},
		{"S(IFS request) with 0", "00 C1 01 00 C0", r0Other},
		{"S(IFS request) with 255", "00 C1 01 FF 3F", r0Other},
		{"S(IFS request) without INF", "00 C1 00 C1", r0Other},
		{"S(WTX request) with two bytes", "00 C3 02 0101 C1", r0Other},
		{"S(ABORT request) with INF", "00 C2 01 00 C3", r0Other},
		{"unsolicited S(RESYNCH response)", resynResp, r0Other},
		{"unsolicited S(WTX response)", "00 E3 01 01 E3", r0Other},
		{"S(RESYNCH request) from the card", resynReq, r0Other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rsp, err := runScript(t, Config{}, step{send: hostI0, recv: tt.recv}, step{send: tt.nak, recv: cardI0})
			if err != nil || !bytes.Equal(rsp, unhex(t, rspHex)) {
				t.Fatalf("Transmit = %X, %v; want %s", rsp, err, rspHex)
			}
		})
	}
	t.Run("LEN above IFSD", func(t *testing.T) {
		rsp, err := runScript(t, Config{IFSD: 3},
			step{send: hostI0, recv: cardI0},
			step{send: r0Other, recv: "00 00 02 9000 92"})
		if err != nil || !bytes.Equal(rsp, []byte{0x90, 0}) {
			t.Fatalf("Transmit = %X, %v; want 9000", rsp, err)
		}
	})
	t.Run("I-block before the chain is acknowledged", func(t *testing.T) {
		rsp, err := runScript(t, Config{IFSC: 3},
			step{send: "00 20 03 00B000 93", recv: cardI0},
			step{send: r0Other, recv: r1},
			step{send: "00 40 02 0002 40", recv: cardI0})
		if err != nil || !bytes.Equal(rsp, unhex(t, rspHex)) {
			t.Fatalf("Transmit = %X, %v; want %s", rsp, err, rspHex)
		}
	})
}

func TestNegotiateIFSD(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		x := &scripted{t: t, steps: []step{{send: "00 C1 01 FE 3E", recv: "00 E1 01 FE 1E"}}}
		c := New(x, Config{})
		if err := c.NegotiateIFSD(context.Background(), 254); err != nil {
			t.Fatal(err)
		}
		x.finished()
	})
	t.Run("request repeated after an error", func(t *testing.T) {
		x := &scripted{t: t, steps: []step{
			{send: "00 C1 01 FE 3E", recv: "00 E1 01 FE 00"},
			{send: "00 C1 01 FE 3E", recv: "00 E1 01 FD 1D"}, // wrong value
			{send: "00 C1 01 FE 3E", err: ErrNoBlock},
			{send: "00 C1 01 FE 3E", recv: "00 E1 01 FE 1E"},
		}}
		c := New(x, Config{})
		if err := c.NegotiateIFSD(context.Background(), 254); err != nil {
			t.Fatal(err)
		}
		x.finished()
	})
	t.Run("card refuses", func(t *testing.T) {
		var steps []step
		for range DefaultMaxRetries + 1 {
			steps = append(steps, step{send: "00 C1 01 20 E0", recv: r0Other})
		}
		steps = append(steps, step{send: resynReq, recv: resynResp}, step{send: hostI0, recv: cardI0})
		x := &scripted{t: t, steps: steps}
		c := New(x, Config{IFSD: 100})
		err := c.NegotiateIFSD(context.Background(), 32)
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
		if c.ifsd != 100 {
			t.Errorf("IFSD %d after a failed negotiation, want 100", c.ifsd)
		}
		if _, err := c.Transmit(context.Background(), unhex(t, apduHex)); err != nil {
			t.Fatal(err)
		}
		x.finished()
	})
	for _, bad := range []int{-1, 0, 255, 1000} {
		if err := New(&scripted{t: t}, Config{}).NegotiateIFSD(context.Background(), bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("NegotiateIFSD(%d) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestTransmitArguments(t *testing.T) {
	c := New(&scripted{t: t}, Config{})
	for _, n := range []int{0, MaxAPDU + 1} {
		if _, err := c.Transmit(context.Background(), make([]byte, n)); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Transmit(%d bytes) = %v, want ErrInvalidArgument", n, err)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := New(&scripted{t: t}, Config{IFSC: 1000, IFSD: -5})
	if c.ifsc != MaxINF || c.ifsd != DefaultIFSD || c.cfg.MaxRetries != DefaultMaxRetries {
		t.Errorf("ifsc %d ifsd %d retries %d", c.ifsc, c.ifsd, c.cfg.MaxRetries)
	}
}

// funcExchanger answers with a function of the block sent.
type funcExchanger func(ctx context.Context, block []byte, bwi byte) ([]byte, error)

func (f funcExchanger) Exchange(ctx context.Context, block []byte, bwi byte) ([]byte, error) {
	return f(ctx, block, bwi)
}

func TestReaderErrorIsFatal(t *testing.T) {
	errUSB := errors.New("usb: device gone")
	x := &scripted{t: t, steps: []step{
		{send: hostI0, err: errUSB},
		{send: resynReq, recv: resynResp},
		{send: hostI0, recv: cardI0},
	}}
	c := New(x, Config{})
	if _, err := c.Transmit(context.Background(), unhex(t, apduHex)); !errors.Is(err, errUSB) {
		t.Fatalf("error %v, want the reader's", err)
	}
	if _, err := c.Transmit(context.Background(), unhex(t, apduHex)); err != nil {
		t.Fatal(err)
	}
	x.finished()
}

func TestContextCancellation(t *testing.T) {
	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		c := New(&scripted{t: t}, Config{})
		if _, err := c.Transmit(ctx, unhex(t, apduHex)); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		if c.needResync {
			t.Error("nothing was sent, yet a resync is due")
		}
	})
	t.Run("mid-chain", func(t *testing.T) {
		f := newFixture(t, 600, CardConfig{}, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.loop.before = func(i int) {
			if i == 3 {
				cancel() // the reader notices on its next round trip
			}
		}
		if _, err := f.conn.Transmit(ctx, pattern(200, 3)); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		f.loop.before = nil
		f.loop.sent = nil
		f.transmit(t, 200)
		if first := f.loop.sent[0].block[1]; first != pcbS|sResynch {
			t.Errorf("first block after cancellation %v, want S(RESYNCH request)", describePCB(first))
		}
	})
	t.Run("blocked in Exchange", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		entered := make(chan struct{})
		done := make(chan struct{})
		go func() { // owned by this test; ends once it has cancelled
			defer close(done)
			<-entered
			cancel()
		}()
		x := funcExchanger(func(ctx context.Context, _ []byte, _ byte) ([]byte, error) {
			close(entered)
			<-ctx.Done()
			return nil, fmt.Errorf("reader: %w", ctx.Err())
		})
		c := New(x, Config{})
		_, err := c.Transmit(ctx, unhex(t, apduHex))
		<-done
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		if !c.needResync {
			t.Error("resync not due after a cancelled exchange")
		}
	})
	t.Run("reader reports no block as ctx ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		x := funcExchanger(func(context.Context, []byte, byte) ([]byte, error) {
			cancel()
			return nil, ErrNoBlock
		})
		_, err := New(x, Config{}).Transmit(ctx, unhex(t, apduHex))
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNoBlock) {
			t.Fatalf("error %v, want context.Canceled wrapping the reader's error", err)
		}
	})
}

// A misbehaving card cannot keep Transmit busy forever.
func TestBoundedByCard(t *testing.T) {
	ctx := context.Background()
	build := func(pcb byte, inf []byte) []byte { return appendBlock(nil, 0, pcb, inf, false) }
	t.Run("endless WTX", func(t *testing.T) {
		n := 0
		x := funcExchanger(func(context.Context, []byte, byte) ([]byte, error) {
			n++
			return build(pcbS|sWTX, []byte{1}), nil
		})
		c := New(x, Config{})
		if _, err := c.Transmit(ctx, unhex(t, apduHex)); !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
		if n != maxIdle+1 {
			t.Errorf("%d exchanges, want %d", n, maxIdle+1)
		}
	})
	t.Run("endless response", func(t *testing.T) {
		var seq byte
		x := funcExchanger(func(context.Context, []byte, byte) ([]byte, error) {
			b := build(seq<<6|iMore, make([]byte, MaxINF))
			seq ^= 1
			return b, nil
		})
		_, err := New(x, Config{}).Transmit(ctx, unhex(t, apduHex))
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "longer") {
			t.Fatalf("error %v, want ErrProtocol for an overlong response", err)
		}
	})
	t.Run("endless empty chain", func(t *testing.T) {
		var seq byte
		x := funcExchanger(func(context.Context, []byte, byte) ([]byte, error) {
			b := build(seq<<6|iMore, nil)
			seq ^= 1
			return b, nil
		})
		if _, err := New(x, Config{}).Transmit(ctx, unhex(t, apduHex)); !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v, want ErrProtocol", err)
		}
	})
}

func TestEmptyResponse(t *testing.T) {
	rsp, err := runScript(t, Config{}, step{send: hostI0, recv: "00 00 00 00"})
	if err != nil || rsp == nil || len(rsp) != 0 {
		t.Fatalf("Transmit = %#v, %v; want an empty response", rsp, err)
	}
}

func TestErrorMessages(t *testing.T) {
	_, err := runScript(t, Config{},
		step{send: hostI0, recv: cardI0Bad},
		step{send: r0EDC, recv: cardI0Bad},
		step{send: r0EDC, recv: cardI0Bad},
		step{send: r0EDC, recv: cardI0Bad},
		step{send: resynReq, recv: resynResp})
	want := "t1: sending APDU: resynchronised after 4 invalid blocks in a row: invalid block: LRC 00, computed B2"
	if err == nil || err.Error() != want {
		t.Errorf("error %q,\nwant  %q", err, want)
	}
}

func TestResyncErrors(t *testing.T) {
	x := &scripted{t: t, steps: []step{
		{send: resynReq, err: ErrNoBlock},
		{send: resynReq, recv: r0Other},
		{send: resynReq, recv: cardI0},
	}}
	c := New(x, Config{})
	err := c.Resync(context.Background())
	if !errors.Is(err, ErrResyncFailed) || !strings.HasPrefix(err.Error(), "t1: ") {
		t.Fatalf("error %v, want ErrResyncFailed", err)
	}
	x.finished()

	errUSB := errors.New("usb: stall")
	x = &scripted{t: t, steps: []step{{send: resynReq, err: errUSB}}}
	c = New(x, Config{})
	if err := c.Resync(context.Background()); !errors.Is(err, ErrResyncFailed) || !errors.Is(err, errUSB) {
		t.Fatalf("error %v, want ErrResyncFailed wrapping the reader's", err)
	}
	// The resync is still due: NegotiateIFSD tries it first.
	x.steps = append(x.steps, step{send: resynReq, err: errUSB})
	if err := c.NegotiateIFSD(context.Background(), 254); !errors.Is(err, errUSB) {
		t.Fatalf("NegotiateIFSD error %v, want the reader's", err)
	}
	x.steps = append(x.steps, step{send: resynReq, recv: resynResp}, step{send: "00 C1 01 FE 3E", err: errUSB})
	if err := c.NegotiateIFSD(context.Background(), 254); !errors.Is(err, errUSB) || !c.needResync {
		t.Fatalf("NegotiateIFSD error %v (needResync %v), want the reader's", err, c.needResync)
	}
	x.finished()
}

func TestAbortAnswerLost(t *testing.T) {
	// The card's answer to S(ABORT response) does not matter, even if the
	// reader reports an error for it.
	_, err := runScript(t, Config{},
		step{send: hostI0, recv: "00 C2 00 C2"},
		step{send: "00 E2 00 E2", err: errors.New("usb: timeout")})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("error %v, want ErrAborted", err)
	}
}

func TestCardSideConfigDefaults(t *testing.T) {
	c := NewCardSide(func([]byte) []byte { return nil }, CardConfig{IFSC: 999, WTXEvery: -1})
	if c.cfg.IFSC != MaxINF || c.cfg.WTXEvery != 0 || c.cfg.WTXMultiplier != 1 {
		t.Errorf("normalised config %+v", c.cfg)
	}
	// An empty response is an empty I-block.
	runCard(t, c, []cardExchange{{hostI0, "00 00 00 00"}})
}
