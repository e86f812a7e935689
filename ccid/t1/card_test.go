package t1

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// cardExchange is one block the host hands the card and the answer it
// must get ("" for none).
type cardExchange struct {
	in, want string
}

func runCard(t *testing.T, c *CardSide, script []cardExchange) {
	t.Helper()
	for i, ex := range script {
		got := c.HandleBlock(unhex(t, ex.in))
		if want := unhex(t, ex.want); !bytes.Equal(got, want) || (got == nil) != (ex.want == "") {
			t.Fatalf("step %d: card answered %s with %X, want %s", i, ex.in, got, ex.want)
		}
	}
}

// The card side follows the same rules, seen from the other end.
func TestCardSide(t *testing.T) {
	echo := func(apdu []byte) []byte { return []byte{0x12, 0x34, 0x90, 0x00} }
	tests := []struct {
		name   string
		cfg    CardConfig
		inject func(c *CardSide)
		script []cardExchange
	}{
		{"exchange", CardConfig{}, nil, []cardExchange{
			{hostI0, cardI0},
			{"00 40 05 00B0000002 F7", "00 40 04 12349000 F2"},
		}},
		{"invalid first block: R(0) with NAD 0", CardConfig{}, nil, []cardExchange{
			{"00 00 05 00B0000002 00", r0EDC},
			{hostI0, cardI0},
		}},
		{"NAD swapped", CardConfig{}, nil, []cardExchange{
			{"12 00 05 00B0000002 A5", "21 00 04 12349000 93"},
		}},
		{"chained command", CardConfig{}, nil, []cardExchange{
			{"00 20 03 00B000 93", r1},
			{"00 40 02 0002 40", cardI0},
		}},
		{"command block lost: the card names the block it expects", CardConfig{}, nil, []cardExchange{
			{hostI0, cardI0},
			{"00 90 00 90", "00 92 00 92"}, // host timed out waiting; R(1) other error
		}},
		{"host repeats its acknowledgement request: card repeats its answer", CardConfig{}, nil, []cardExchange{
			{hostI0, cardI0},
			{r0EDC, cardI0},
			{r0EDC, cardI0},
		}},
		{"error in a chained command repeats the acknowledgement (rule 7.2)", CardConfig{}, nil, []cardExchange{
			{"00 20 03 00B000 93", r1},
			{"00 40 02 0002 00", r1},
			{"00 40 02 0002 40", cardI0},
		}},
		{"LEN above IFSC", CardConfig{IFSC: 4}, nil, []cardExchange{
			{hostI0, r0Other},
		}},
		{"wrong N(S)", CardConfig{}, nil, []cardExchange{
			{"00 40 05 00B0000002 F7", r0Other},
		}},
		{"IFS request from the host", CardConfig{}, nil, []cardExchange{
			{"00 C1 01 FE 3E", "00 E1 01 FE 1E"},
		}},
		{"RESYNCH", CardConfig{}, nil, []cardExchange{
			{hostI0, cardI0},
			{resynReq, resynResp},
			{hostI0, cardI0},
		}},
		{"ABORT request from the host", CardConfig{}, nil, []cardExchange{
			{"00 20 03 00B000 93", r1},
			{"00 C2 00 C2", "00 E2 00 E2"},
			{"00 40 02 0002 40", cardI0}, // the chain is gone: I(1,0) starts a new command
		}},
		{"S(WTX request) from the host", CardConfig{}, nil, []cardExchange{
			{"00 C3 01 01 C3", r0Other},
		}},
		{"unsolicited S(WTX response)", CardConfig{}, nil, []cardExchange{
			{"00 E3 01 01 E3", r0Other},
		}},
		{"WTX", CardConfig{}, func(c *CardSide) { c.InjectWTX(3) }, []cardExchange{
			{hostI0, "00 C3 01 03 C1"},
			{"00 E3 01 02 E0", "00 C3 01 03 C1"}, // wrong value: the request again
			{"00 82 00 82", "00 C3 01 03 C1"},    // host could not read it: again
			{"00 E3 01 03 E1", cardI0},
		}},
		{"IFS request from the card", CardConfig{}, func(c *CardSide) { c.InjectIFSRequest(16) }, []cardExchange{
			{hostI0, "00 C1 01 10 D0"},
			{"00 E1 01 10 F0", cardI0},
		}},
		{"abort", CardConfig{}, func(c *CardSide) { c.InjectAbort() }, []cardExchange{
			{hostI0, "00 C2 00 C2"},
			{"00 E2 00 E2", r1}, // gives the host the right to send
		}},
		{"mute", CardConfig{}, func(c *CardSide) { c.InjectMute(1) }, []cardExchange{
			{hostI0, ""},
			{r0Other, cardI0},
		}},
		{"bad sequence", CardConfig{}, func(c *CardSide) { c.InjectBadSequence() }, []cardExchange{
			{hostI0, "00 40 04 12349000 F2"},
			{r0Other, cardI0},
		}},
		{"EDC error", CardConfig{}, func(c *CardSide) { c.InjectEDCError(1) }, []cardExchange{
			{hostI0, "00 00 04 12349000 E8"},
			{r0EDC, cardI0},
		}},
		{"CRC", CardConfig{CRC: true}, nil, []cardExchange{
			{"00 00 05 00B0000002 2A85", "00 00 04 12349000 58DA"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCardSide(echo, tt.cfg)
			if tt.inject != nil {
				tt.inject(c)
			}
			runCard(t, c, tt.script)
		})
	}
}

func TestCardSideReset(t *testing.T) {
	c := NewCardSide(func([]byte) []byte { return []byte{0x90, 0} }, CardConfig{})
	c.HandleBlock(unhex(t, hostI0))
	c.HandleBlock(unhex(t, "00 C1 01 FE 3E"))
	c.Reset()
	if s := c.Stats(); s.IFSD != initialIFS {
		t.Errorf("IFSD after reset %d", s.IFSD)
	}
	runCard(t, c, []cardExchange{{hostI0, "00 00 02 9000 92"}})
}

// hostBlocks splits fuzz input into blocks: each starts with its length.
func hostBlocks(in []byte) [][]byte {
	var out [][]byte
	for len(in) > 0 {
		n := min(int(in[0]), len(in)-1)
		out = append(out, in[1:1+n])
		in = in[1+n:]
	}
	return out
}

func joinBlocks(blocks ...[]byte) []byte {
	var out []byte
	for _, b := range blocks {
		out = append(out, byte(len(b)))
		out = append(out, b...)
	}
	return out
}

// FuzzHandleBlock: whatever the host sends, the card side never panics
// and answers with a valid block (nothing else is injected here).
func FuzzHandleBlock(f *testing.F) {
	// Seeds: the blocks a host sends in real exchanges.
	for _, cmdLen := range []int{5, 100} {
		fx := newFixture(f, 100, CardConfig{}, Config{})
		fx.card.InjectIFSRequest(8)
		if _, err := fx.conn.Transmit(context.Background(), pattern(cmdLen, 1)); err != nil {
			f.Fatal(err)
		}
		var blocks [][]byte
		for _, s := range fx.loop.sent {
			blocks = append(blocks, s.block)
		}
		f.Add(joinBlocks(blocks...), byte(0))
	}
	f.Add(joinBlocks(unhex(f, resynReq), unhex(f, hostI0), unhex(f, "00 C1 01 FE 3E")), byte(7))
	f.Add(joinBlocks(unhex(f, "00 20 03 00B000 93"), unhex(f, "00 C2 00 C2"), unhex(f, r1)), byte(0x1F))
	f.Fuzz(func(t *testing.T, in []byte, faults byte) {
		c := NewCardSide(func(apdu []byte) []byte {
			return append(bytes.Repeat(apdu, 3), 0x90, 0x00)
		}, CardConfig{IFSC: 20, WTXEvery: int(faults >> 6)})
		if faults&1 != 0 {
			c.InjectAbort()
		}
		if faults&2 != 0 {
			c.InjectWTX(faults)
		}
		if faults&4 != 0 {
			c.InjectIFSRequest(int(faults))
		}
		if faults&8 != 0 {
			c.InjectBadSequence()
		}
		for _, blk := range hostBlocks(in) {
			out := c.HandleBlock(blk)
			if _, err := parseBlock(out, false, MaxINF); err != nil {
				t.Fatalf("card answered %X with %X: %v", blk, out, err)
			}
		}
	})
}

// FuzzTransmit: whatever the card answers, Transmit never panics, ends,
// and returns a response only if it is within bounds.
func FuzzTransmit(f *testing.F) {
	f.Add(joinBlocks(unhex(f, cardI0)), false)
	f.Add(joinBlocks(unhex(f, "00 20 02 1234 04"), unhex(f, "00 40 02 9000 D2")), false)
	f.Add(joinBlocks(unhex(f, "00 C3 01 03 C1"), unhex(f, cardI0Bad), unhex(f, cardI0)), false)
	f.Add(joinBlocks(unhex(f, "00 C1 01 01 C1"), unhex(f, r1), unhex(f, r1)), false)
	f.Add(joinBlocks(unhex(f, "00 C2 00 C2"), unhex(f, resynResp)), false)
	f.Add(joinBlocks(unhex(f, "00 00 04 12349000 58DA")), true)
	f.Fuzz(func(t *testing.T, in []byte, crc bool) {
		blocks := hostBlocks(in)
		x := funcExchanger(func(context.Context, []byte, byte) ([]byte, error) {
			if len(blocks) == 0 {
				return nil, ErrNoBlock
			}
			b := blocks[0]
			blocks = blocks[1:]
			return b, nil
		})
		c := New(x, Config{CRC: crc, IFSC: 3})
		rsp, err := c.Transmit(context.Background(), pattern(10, 1))
		if err == nil && len(rsp) > MaxResponse {
			t.Fatalf("%d-byte response", len(rsp))
		}
		_ = c.NegotiateIFSD(context.Background(), 100)
	})
}

// faulty carries blocks between a Conn and a CardSide and breaks them as
// a fuzz script says: per exchange, lose or damage the host's block or the
// card's answer. Once the script is used up the line is clean.
type faulty struct {
	t      testing.TB
	card   *CardSide
	script []byte
	n      int // exchanges so far
}

func (l *faulty) Exchange(ctx context.Context, block []byte, _ byte) ([]byte, error) {
	if l.n++; l.n > 100000 {
		l.t.Fatalf("livelock: host keeps sending %s", describePCB(block[1]))
	}
	op := byte(0)
	if len(l.script) > 0 {
		op, l.script = l.script[0], l.script[1:]
	}
	damage := func(b []byte) []byte {
		b = bytes.Clone(b)
		b[int(op>>3)%len(b)] ^= 1 << (op >> 5)
		return b
	}
	switch op & 7 {
	case 4:
		return nil, ErrNoBlock
	case 6:
		block = damage(block)
	}
	rx := l.card.HandleBlock(block)
	switch {
	case rx == nil || op&7 == 5:
		return nil, ErrNoBlock
	case op&7 == 7:
		rx = damage(rx)
	}
	return rx, nil
}

// FuzzLoopbackFaults: whatever the line does, every response Transmit
// returns is the right one, the card never executes a partial or repeated
// command within one call, every failure is a typed error, and once the
// line is clean the next call succeeds.
func FuzzLoopbackFaults(f *testing.F) {
	f.Add([]byte{}, uint16(600), uint16(1000), false)
	f.Add([]byte{0, 4, 0, 5, 0, 6, 0, 7}, uint16(100), uint16(100), false)
	f.Add([]byte{7, 7, 7, 7, 7, 7, 7, 7, 7, 7}, uint16(5), uint16(4), true)
	f.Add([]byte{0, 0, 0x0d, 0x1c, 0x2f, 5, 5, 4}, uint16(300), uint16(40), true)
	f.Fuzz(func(t *testing.T, script []byte, cmdLen, rspLen uint16, crc bool) {
		cmdLen, rspLen = cmdLen%2000+1, rspLen%2000
		app := &apduCard{rspLen: int(rspLen)}
		card := NewCardSide(app.process, CardConfig{IFSC: 20, CRC: crc, WTXEvery: int(cmdLen % 5)})
		line := &faulty{t: t, card: card, script: script}
		conn := New(line, Config{IFSC: 20, CRC: crc})
		cmd := pattern(int(cmdLen), 9)
		for try := 0; ; try++ {
			before := len(app.commands)
			rsp, err := conn.Transmit(context.Background(), cmd)
			ran := app.commands[before:]
			if len(ran) > 1 || len(ran) == 1 && !bytes.Equal(ran[0], cmd) {
				t.Fatalf("try %d: card executed %d commands %x", try, len(ran), ran)
			}
			if err == nil {
				want := append(pattern(int(rspLen), byte(len(app.commands))), 0x90, 0x00)
				if len(ran) != 1 || !bytes.Equal(rsp, want) {
					t.Fatalf("try %d: response %x after %d executions, want %x", try, rsp, len(ran), want)
				}
				if len(line.script) == 0 {
					return
				}
				continue
			}
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrResyncFailed) {
				t.Fatalf("try %d: untyped error %v", try, err)
			}
			if len(line.script) == 0 && try > len(script)+2 {
				t.Fatalf("try %d: still failing on a clean line: %v", try, err)
			}
		}
	})
}

// Faults can be injected and stats read while another goroutine drives
// the card (run with -race).
func TestCardSideConcurrent(t *testing.T) {
	f := newFixture(t, 300, CardConfig{}, Config{})
	done := make(chan struct{})
	go func() { // owned by this test; ends when the transmits are done
		defer close(done)
		for range 20 {
			f.card.InjectWTX(2)
			_ = f.card.Stats()
		}
	}()
	for range 5 {
		f.transmit(t, 100)
	}
	<-done
}
