package t1

import (
	"bytes"
	"sync"
)

// CardConfig holds the T=1 parameters a simulated card announces in its
// ATR, and how often it asks for more time.
type CardConfig struct {
	// IFSC is the largest information field the card accepts (its ATR
	// TA3). 0 means DefaultIFSC; values above MaxINF are clamped.
	IFSC int
	// CRC selects the two-byte CRC instead of the LRC.
	CRC bool
	// WTXEvery makes the card send S(WTX request) before answering every
	// n-th I-block it receives; 0 never does.
	WTXEvery int
	// WTXMultiplier is the value of those requests. 0 means 1.
	WTXMultiplier byte
}

// CardStats counts what a CardSide has seen and done.
type CardStats struct {
	Blocks      int // blocks handed to HandleBlock
	Invalid     int // blocks the card could not accept (answered by an error R-block or a repeat)
	IBlocks     int // valid I-blocks received
	RBlocks     int // valid R-blocks received
	SBlocks     int // valid S-blocks received
	Commands    int // complete commands passed to process
	Retransmits int // blocks sent again
	Resyncs     int // S(RESYNCH request)s answered
	Aborts      int // chains aborted, by either side
	WTXRequests int // S(WTX request)s sent
	Muted       int // answers swallowed by InjectMute
	MaxINF      int // longest information field received in an I-block
	IFSD        int // the host's IFSD as the card knows it
}

// noS marks that the card awaits no S-block response.
const noS = 0xFF

// CardSide is the card end of a T=1 connection, for simulated TPDU-level
// readers: HandleBlock takes each block the host sends and returns the
// card's answer. Commands are reassembled from chained I-blocks and passed
// to process; the response is chained back in blocks of the host's IFSD.
//
// The Inject methods make the card misbehave once, on a later answer, so
// tests can exercise the host's error handling. A CardSide is safe for
// concurrent use.
type CardSide struct {
	process func(apdu []byte) []byte
	cfg     CardConfig // normalised

	mu sync.Mutex
	// Protocol state, guarded by mu.
	ifsc, ifsd int    // largest INF the card accepts; the host accepts
	nad        byte   // NAD of the card's blocks: the host's, swapped
	ns, nr     byte   // N(S) of the card's next I-block; N(S) expected from the host
	cmd        []byte // command being reassembled
	rsp        []byte // response being sent
	rspOff     int    // bytes of rsp the host has acknowledged
	responding bool   // rsp has bytes not yet sent or acknowledged
	chainOpen  bool   // the last I-block sent was chained and is unacknowledged
	inflight   int    // INF length of the last I-block sent
	lastINS    byte   // N(S) of the last I-block sent
	lastI      []byte // the last I-block sent, as built
	last       []byte // the last block of any kind sent, as built
	lastIsI    bool   // last is lastI
	pendingS   byte   // S-request type awaiting the host's response, or noS
	pendingVal byte   // its INF byte
	answeringI bool   // the next normal answer answers an I-block
	iSeen      int    // I-blocks received, for WTXEvery
	// Faults waiting to happen, guarded by mu.
	fEDC, fMute, fSeq, fAbort int
	fWTX                      []byte
	fIFS                      []byte
	stats                     CardStats
}

// NewCardSide returns the card end of a fresh T=1 connection (as after the
// ATR). process is called with each complete command and returns the
// complete response; it owns the slice it is given.
func NewCardSide(process func(apdu []byte) []byte, cfg CardConfig) *CardSide {
	cfg.IFSC = clampIFS(cfg.IFSC, DefaultIFSC)
	if cfg.WTXEvery < 0 {
		cfg.WTXEvery = 0
	}
	if cfg.WTXMultiplier == 0 {
		cfg.WTXMultiplier = 1
	}
	c := &CardSide{process: process, cfg: cfg}
	c.resetLocked()
	return c
}

// Reset puts the protocol state back to what it is after an ATR, as a
// simulated reader does when it powers the card up again. Injected faults
// and statistics stay.
func (c *CardSide) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked()
	c.last, c.lastI, c.lastIsI = nil, nil, false
	c.nad = 0
}

// resetLocked sets what S(RESYNCH) resets: sequence numbers, IFSs and any
// chain in progress.
func (c *CardSide) resetLocked() {
	c.ifsc, c.ifsd = c.cfg.IFSC, initialIFS
	c.ns, c.nr = 0, 0
	c.clearChains()
	c.lastINS = 0
}

func (c *CardSide) clearChains() {
	c.cmd, c.rsp, c.rspOff = nil, nil, 0
	c.responding, c.chainOpen, c.answeringI = false, false, false
	c.pendingS = noS
}

// Stats returns the counters so far.
func (c *CardSide) Stats() CardStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.IFSD = c.ifsd
	return s
}

// InjectEDCError makes the next n blocks the card sends carry a wrong EDC.
// The card keeps the good block, so a retransmission repairs it.
func (c *CardSide) InjectEDCError(n int) { c.inject(&c.fEDC, n) }

// InjectMute makes the next n answers get lost: HandleBlock returns nil
// (a simulated reader reports the card mute) while the card carries on as
// if they had been sent.
func (c *CardSide) InjectMute(n int) { c.inject(&c.fMute, n) }

// InjectBadSequence makes the next I-block the card sends carry the wrong
// N(S); a retransmission carries the right one.
func (c *CardSide) InjectBadSequence() { c.inject(&c.fSeq, 1) }

// InjectAbort makes the card answer the next I-block, or acknowledgement
// of its chained answer, with S(ABORT request), dropping the chain in
// progress once the host confirms.
func (c *CardSide) InjectAbort() { c.inject(&c.fAbort, 1) }

// InjectWTX makes the card send S(WTX request) with mult before answering
// the next I-block.
func (c *CardSide) InjectWTX(mult byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fWTX = append(c.fWTX, mult)
}

// InjectIFSRequest makes the card send S(IFS request) with ifsc (1..254,
// else clamped) before answering the next I-block; once the host confirms,
// that is the card's IFSC.
func (c *CardSide) InjectIFSRequest(ifsc int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fIFS = append(c.fIFS, byte(clampIFS(ifsc, DefaultIFSC)))
}

func (c *CardSide) inject(counter *int, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*counter += max(n, 0)
}

// HandleBlock takes one block from the host and returns the card's answer,
// or nil when an injected fault swallows it. Any input is safe: a block
// the card cannot accept gets an error R-block, as ISO/IEC 7816-3 rule 7
// requires.
func (c *CardSide) HandleBlock(in []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Blocks++
	b, err := parseBlock(in, c.cfg.CRC, c.ifsc)
	if err != nil {
		bits := byte(rOther)
		if be, ok := err.(*BlockError); ok {
			bits = be.rBits()
		}
		return c.invalid(bits)
	}
	c.nad = swapNibbles(b.nad)
	switch b.kind() {
	case kindI:
		return c.onI(b)
	case kindR:
		return c.onR(b)
	}
	return c.onS(b)
}

// invalid answers a block the card cannot accept: the last R-block or
// S-request again (rule 7.2 and its S-block counterpart), else an R-block naming the I-block the
// card expects.
func (c *CardSide) invalid(bits byte) []byte {
	c.stats.Invalid++
	if c.last != nil {
		if pcb := c.last[1]; kindOf(pcb) == kindR || kindOf(pcb) == kindS && pcb&sResponse == 0 {
			return c.resend(c.last)
		}
	}
	return c.send(pcbR|c.nr<<4|bits, nil)
}

func (c *CardSide) onI(b block) []byte {
	if c.pendingS != noS || c.chainOpen || b.seq() != c.nr || len(c.cmd)+len(b.inf) > MaxAPDU {
		return c.invalid(rOther)
	}
	c.stats.IBlocks++
	c.stats.MaxINF = max(c.stats.MaxINF, len(b.inf))
	c.cmd = append(c.cmd, b.inf...)
	c.nr ^= 1
	c.answeringI = true
	if c.iSeen++; c.cfg.WTXEvery > 0 && c.iSeen%c.cfg.WTXEvery == 0 {
		c.fWTX = append(c.fWTX, c.cfg.WTXMultiplier)
	}
	if !b.more() {
		cmd := c.cmd
		c.cmd = nil
		c.stats.Commands++
		c.rsp = bytes.Clone(c.process(cmd))
		c.rspOff, c.responding = 0, true
	}
	return c.reply()
}

func (c *CardSide) onR(b block) []byte {
	c.stats.RBlocks++
	switch {
	case c.pendingS != noS: // the host could not read the S-request
		return c.resend(c.last)
	case c.chainOpen && b.seq() != c.lastINS: // acknowledgement: next block
		c.rspOff += c.inflight
		c.chainOpen = false
		return c.reply()
	case c.chainOpen, c.lastIsI && b.seq() == c.lastINS:
		c.last, c.lastIsI = c.lastI, true
		return c.resend(c.lastI) // the host asks for the I-block again
	case c.last != nil && kindOf(c.last[1]) == kindR:
		return c.resend(c.last)
	}
	// The host missed a block: name the I-block the card expects.
	return c.send(pcbR|c.nr<<4|rOther, nil)
}

func (c *CardSide) onS(b block) []byte {
	typ := b.pcb & sTypeMask
	if b.pcb&sResponse != 0 {
		if typ != c.pendingS || typ != sAbort && b.inf[0] != c.pendingVal {
			return c.invalid(rOther)
		}
		c.stats.SBlocks++
		c.pendingS = noS
		switch typ {
		case sIFS:
			c.ifsc = int(b.inf[0])
		case sAbort: // return the right to send to the host
			c.clearChains()
			c.stats.Aborts++
			return c.send(pcbR|c.nr<<4, nil)
		}
		return c.reply()
	}
	if c.pendingS != noS && typ != sResynch && typ != sAbort {
		return c.invalid(rOther)
	}
	switch typ {
	case sResynch:
		c.stats.SBlocks++
		c.stats.Resyncs++
		c.resetLocked()
		return c.send(pcbS|sResponse|sResynch, nil)
	case sIFS:
		c.stats.SBlocks++
		c.ifsd = int(b.inf[0])
		return c.send(pcbS|sResponse|sIFS, b.inf)
	case sAbort:
		c.stats.SBlocks++
		c.stats.Aborts++
		c.clearChains()
		return c.send(pcbS|sResponse|sAbort, nil)
	}
	return c.invalid(rOther) // S(WTX request) is the card's to send
}

// reply sends the card's next block: an S-request that is due, else the
// next I-block of the response, else an acknowledgement.
func (c *CardSide) reply() []byte {
	if c.fAbort > 0 && (c.answeringI || c.responding) {
		c.fAbort--
		return c.request(sAbort, 0)
	}
	if c.answeringI {
		if len(c.fIFS) > 0 {
			v := c.fIFS[0]
			c.fIFS = c.fIFS[1:]
			return c.request(sIFS, v)
		}
		if len(c.fWTX) > 0 {
			v := c.fWTX[0]
			c.fWTX = c.fWTX[1:]
			c.stats.WTXRequests++
			return c.request(sWTX, v)
		}
	}
	c.answeringI = false
	if !c.responding {
		return c.send(pcbR|c.nr<<4, nil) // rule 5: acknowledge the chained block
	}
	rest := c.rsp[c.rspOff:]
	n := min(len(rest), c.ifsd)
	pcb := c.ns << 6
	c.chainOpen = n < len(rest)
	if c.chainOpen {
		pcb |= iMore
	} else {
		c.responding = false
	}
	c.inflight, c.lastINS = n, c.ns
	c.ns ^= 1
	out := c.send(pcb, rest[:n])
	c.lastI, c.lastIsI = c.last, true
	return out
}

func (c *CardSide) request(typ, v byte) []byte {
	c.pendingS, c.pendingVal = typ, v
	if typ == sAbort {
		return c.send(pcbS|typ, nil)
	}
	return c.send(pcbS|typ, []byte{v})
}

// send builds a block, remembers it for retransmission and returns what
// goes on the wire.
func (c *CardSide) send(pcb byte, inf []byte) []byte {
	c.last = appendBlock(make([]byte, 0, 3+len(inf)+2), c.nad, pcb, inf, c.cfg.CRC)
	c.lastIsI = false
	return c.wire(c.last)
}

// resend sends blk, which is c.last, again.
func (c *CardSide) resend(blk []byte) []byte {
	c.stats.Retransmits++
	return c.wire(blk)
}

// wire returns a copy of blk with any due fault applied.
func (c *CardSide) wire(blk []byte) []byte {
	if c.fMute > 0 {
		c.fMute--
		c.stats.Muted++
		return nil
	}
	out := bytes.Clone(blk)
	if c.fSeq > 0 && kindOf(out[1]) == kindI {
		c.fSeq--
		out[1] ^= iSeq
		out = appendEDC(out[:len(out)-edcLen(c.cfg.CRC)], out[:len(out)-edcLen(c.cfg.CRC)], c.cfg.CRC)
	}
	if c.fEDC > 0 {
		c.fEDC--
		out[len(out)-1] ^= 0x5A
	}
	return out
}
