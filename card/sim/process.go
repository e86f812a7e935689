package sim

import (
	"bytes"

	"github.com/wsrc-go/wsrc/card"
)

// Status words the simulator answers with.
const (
	swOK               = 0x9000
	swWrongLength      = 0x6700
	swChannelNotSupp   = 0x6881
	swSMNotSupp        = 0x6882
	swIncompatibleFile = 0x6981
	swSecurity         = 0x6982
	swConditions       = 0x6985
	swNoEF             = 0x6986
	swWrongData        = 0x6a80
	swNotFound         = 0x6a82
	swRecordNotFound   = 0x6a83
	swWrongP1P2        = 0x6a86
	swOffset           = 0x6b00
	swINS              = 0x6d00
	swCLA              = 0x6e00
)

// Instructions.
const (
	insSelect       = 0xa4
	insReadBinary   = 0xb0
	insReadRecord   = 0xb2
	insUpdateBinary = 0xd6
	insStatus       = 0xf2
	insStoreData    = 0xe2
	insGetResponse  = 0xc0
)

// Class groups.
const (
	classISO  = 1 << iota // 0X: interindustry
	classProp             // 8X: UICC proprietary (STATUS, STORE DATA)
)

var getEIDTag = []byte{0xbf, 0x3e}

func swBytes(sw uint16) []byte { return []byte{byte(sw >> 8), byte(sw)} }

// process handles one APDU; c.mu is held.
func (c *Card) process(raw []byte) []byte {
	cmd, err := card.ParseCommand(raw)
	if err != nil {
		c.pending = nil
		return swBytes(swWrongLength)
	}
	if sw, ok := checkClass(cmd.CLA); !ok {
		c.pending = nil
		return swBytes(sw)
	}
	if cmd.INS == insGetResponse {
		return c.getResponse(cmd)
	}
	c.pending = nil
	data, sw := c.execute(cmd)
	return c.deliver(cmd, data, sw)
}

// checkClass accepts CLA 00 and 80 only (basic channel, no secure
// messaging).
func checkClass(cla byte) (uint16, bool) {
	if cla&0xf0 != 0x00 && cla&0xf0 != 0x80 {
		return swCLA, false
	}
	if cla&0x0c != 0 {
		return swSMNotSupp, false
	}
	if cla&0x03 != 0 {
		return swChannelNotSupp, false
	}
	return 0, true
}

func classOf(cla byte) int {
	if cla&0x80 != 0 {
		return classProp
	}
	return classISO
}

func (c *Card) execute(cmd card.Command) ([]byte, uint16) {
	var want int
	var h func(card.Command) ([]byte, uint16)
	switch cmd.INS {
	case insSelect:
		want, h = classISO, c.selectFile
	case insReadBinary:
		want, h = classISO, c.readBinary
	case insUpdateBinary:
		want, h = classISO, c.updateBinary
	case insReadRecord:
		want, h = classISO, c.readRecord
	case insStatus:
		want, h = classProp, c.status
	case insStoreData:
		want, h = classProp, c.storeData
	default:
		return nil, swINS
	}
	if classOf(cmd.CLA) != want {
		return nil, swCLA
	}
	return h(cmd)
}

// deliver turns a command's result into the response APDU according to
// the delivery mode (see the package doc).
func (c *Card) deliver(cmd card.Command, data []byte, sw uint16) []byte {
	if len(data) == 0 {
		return swBytes(sw)
	}
	if c.cfg.T0GetResponse && !cmd.Extended {
		if cmd.Case() != 2 {
			c.pending = data
			return swBytes(more(len(data)))
		}
		if len(data) < cmd.Ne {
			return swBytes(0x6c00 | uint16(byte(len(data))))
		}
	}
	if cmd.Ne == 0 || len(data) <= cmd.Ne {
		return append(data[:len(data):len(data)], swBytes(sw)...)
	}
	c.pending = data[cmd.Ne:]
	return append(data[:cmd.Ne:cmd.Ne], swBytes(more(len(c.pending)))...)
}

// more is 61xx for n bytes waiting (xx=00 for 256 or more).
func more(n int) uint16 {
	if n >= 256 {
		return 0x6100
	}
	return 0x6100 | uint16(n)
}

func (c *Card) getResponse(cmd card.Command) []byte {
	if cmd.P1 != 0 || cmd.P2 != 0 {
		c.pending = nil
		return swBytes(swWrongP1P2)
	}
	if len(cmd.Data) != 0 {
		c.pending = nil
		return swBytes(swWrongLength)
	}
	if len(c.pending) == 0 {
		return swBytes(swConditions)
	}
	ne := cmd.Ne
	if ne == 0 {
		ne = card.MaxShortNe
	}
	if c.cfg.T0GetResponse && !cmd.Extended && ne > len(c.pending) {
		// Wrong Le: say how many bytes wait, keep them.
		return swBytes(0x6c00 | uint16(byte(len(c.pending))))
	}
	n := min(ne, len(c.pending))
	out := append([]byte(nil), c.pending[:n]...)
	c.pending = c.pending[n:]
	if len(c.pending) > 0 {
		return append(out, swBytes(more(len(c.pending)))...)
	}
	c.pending = nil
	return append(out, swBytes(swOK)...)
}

// selectFile implements SELECT (A4).
func (c *Card) selectFile(cmd card.Command) ([]byte, uint16) {
	var resp bool
	switch cmd.P2 &^ 0x03 {
	case 0x00, 0x04:
		resp = true
	case 0x0c, 0x08:
	default:
		return nil, swWrongP1P2
	}
	occurrence := cmd.P2 & 0x03
	if occurrence != 0 && (cmd.P1 != 0x04 || occurrence != 0x02) {
		return nil, swWrongP1P2
	}
	switch cmd.P1 {
	case 0x00:
		return c.selectFID(cmd.Data, resp)
	case 0x03:
		if len(cmd.Data) != 0 {
			return nil, swWrongLength
		}
		if c.curDF.parent == nil || c.app {
			return nil, swNotFound
		}
		return c.selected(c.curDF.parent, resp)
	case 0x04:
		if len(cmd.Data) == 0 || len(cmd.Data) > 16 {
			return nil, swWrongLength
		}
		if occurrence == 0x02 { // next occurrence: we hold one of each
			return nil, swNotFound
		}
		return c.selectAID(cmd.Data, resp)
	case 0x08, 0x09:
		return c.selectPath(cmd.P1 == 0x08, cmd.Data, resp)
	}
	return nil, swWrongP1P2
}

func (c *Card) selectFID(data []byte, resp bool) ([]byte, uint16) {
	if len(data) == 0 {
		return c.selected(c.mf, resp)
	}
	if len(data) != 2 {
		return nil, swWrongLength
	}
	id := uint16(data[0])<<8 | uint16(data[1])
	f := c.findFID(id)
	if f == nil {
		return nil, swNotFound
	}
	return c.selected(f, resp)
}

// findFID looks id up the way TS 102 221 8.4.1 allows from the current
// DF: the MF, the current ADF (7FFF), the current DF itself, its
// children, its parent and the parent's children.
func (c *Card) findFID(id uint16) *file {
	df := c.curDF
	switch {
	case id == fidMF:
		return c.mf
	case id == fidADF:
		return c.lastADF
	case id == df.fid:
		return df
	}
	if f := df.child(id); f != nil {
		return f
	}
	if p := df.parent; p != nil {
		if p.fid == id {
			return p
		}
		if f := p.child(id); f != nil {
			return f
		}
	}
	return nil
}

func (c *Card) selectPath(fromMF bool, path []byte, resp bool) ([]byte, uint16) {
	if len(path) == 0 || len(path)%2 != 0 {
		return nil, swWrongLength
	}
	f := c.curDF
	if fromMF {
		f = c.mf
	}
	for i := 0; i < len(path); i += 2 {
		id := uint16(path[i])<<8 | uint16(path[i+1])
		switch {
		case i == 0 && fromMF && id == fidMF:
			continue
		case id == fidADF && i == 0 && !fromMF:
			next := c.findFID(fidADF)
			if next == nil {
				return nil, swNotFound
			}
			f = next
			continue
		}
		if f.kind != kindDF {
			return nil, swNotFound
		}
		next := f.child(id)
		if next == nil {
			return nil, swNotFound
		}
		f = next
	}
	return c.selected(f, resp)
}

func (c *Card) selectAID(aid []byte, resp bool) ([]byte, uint16) {
	if c.isdr && bytes.HasPrefix(c.isdrAID, aid) {
		c.curDF, c.curEF, c.app, c.recPtr = c.mf, nil, true, 0
		if !resp {
			return nil, swOK
		}
		return append([]byte(nil), c.isdrFCI...), swOK
	}
	if c.adf != nil && bytes.HasPrefix(c.adf.aid, aid) {
		c.lastADF = c.adf
		return c.selected(c.adf, resp)
	}
	return nil, swNotFound
}

// selected makes f the current file and returns its FCP if asked.
func (c *Card) selected(f *file, resp bool) ([]byte, uint16) {
	c.app, c.recPtr = false, 0
	if f.kind == kindDF {
		c.curDF, c.curEF = f, nil
	} else {
		c.curDF, c.curEF = f.parent, f
	}
	if !resp {
		return nil, swOK
	}
	return append([]byte(nil), f.fcp...), swOK
}

// efFor finds the EF a READ/UPDATE addresses: by SFI (when sfi != 0,
// which also selects it) or the current EF.
func (c *Card) efFor(sfi byte) (*file, uint16) {
	if sfi == 0 {
		if c.curEF == nil || c.app {
			return nil, swNoEF
		}
		return c.curEF, swOK
	}
	f := c.curDF.childBySFI(sfi)
	if f == nil {
		return nil, swNotFound
	}
	if f != c.curEF {
		c.curEF, c.recPtr, c.app = f, 0, false
	}
	return f, swOK
}

// binaryTarget decodes P1/P2 of READ/UPDATE BINARY.
func (c *Card) binaryTarget(cmd card.Command) (*file, int, uint16) {
	var sfi byte
	offset := int(cmd.P1)<<8 | int(cmd.P2)
	if cmd.P1&0x80 != 0 {
		if cmd.P1&0x60 != 0 {
			return nil, 0, swWrongP1P2
		}
		sfi, offset = cmd.P1&0x1f, int(cmd.P2)
		if sfi == 0 {
			return nil, 0, swWrongP1P2
		}
	}
	f, sw := c.efFor(sfi)
	if f == nil {
		return nil, 0, sw
	}
	if f.kind != kindTransparent {
		return nil, 0, swIncompatibleFile
	}
	if offset >= len(f.data) {
		return nil, 0, swOffset
	}
	return f, offset, swOK
}

func (c *Card) readBinary(cmd card.Command) ([]byte, uint16) {
	if len(cmd.Data) != 0 || cmd.Ne == 0 {
		return nil, swWrongLength
	}
	f, off, sw := c.binaryTarget(cmd)
	if f == nil {
		return nil, sw
	}
	if f.needsPIN {
		return nil, swSecurity
	}
	n := min(cmd.Ne, len(f.data)-off)
	return append([]byte(nil), f.data[off:off+n]...), swOK
}

func (c *Card) updateBinary(cmd card.Command) ([]byte, uint16) {
	if len(cmd.Data) == 0 {
		return nil, swWrongLength
	}
	f, off, sw := c.binaryTarget(cmd)
	if f == nil {
		return nil, sw
	}
	if !f.writable {
		return nil, swSecurity
	}
	if off+len(cmd.Data) > len(f.data) {
		return nil, swWrongLength
	}
	copy(f.data[off:], cmd.Data)
	return nil, swOK
}

func (c *Card) readRecord(cmd card.Command) ([]byte, uint16) {
	if len(cmd.Data) != 0 || cmd.Ne == 0 {
		return nil, swWrongLength
	}
	f, sw := c.efFor(cmd.P2 >> 3)
	if f == nil {
		return nil, sw
	}
	if f.kind != kindLinear {
		return nil, swIncompatibleFile
	}
	rec := int(cmd.P1)
	switch cmd.P2 & 0x07 {
	case 0x04:
		if rec == 0 {
			rec = c.recPtr
		}
	case 0x02:
		if rec != 0 {
			return nil, swWrongP1P2
		}
		rec = c.recPtr + 1
	case 0x03:
		if rec != 0 {
			return nil, swWrongP1P2
		}
		rec = c.recPtr - 1
		if c.recPtr == 0 {
			rec = len(f.records)
		}
	default:
		return nil, swWrongP1P2
	}
	if rec < 1 || rec > len(f.records) {
		return nil, swRecordNotFound
	}
	c.recPtr = rec
	r := f.records[rec-1]
	if cmd.Ne < len(r) {
		return nil, 0x6c00 | uint16(byte(len(r)))
	}
	return append([]byte(nil), r...), swOK
}

// status implements STATUS (80 F2): P2 00 FCP of the current DF (FCI
// when the ISD-R is selected), 01 its AID, 0C nothing.
func (c *Card) status(cmd card.Command) ([]byte, uint16) {
	if cmd.P1 > 0x02 {
		return nil, swWrongP1P2
	}
	switch cmd.P2 {
	case 0x00:
		if c.app {
			return append([]byte(nil), c.isdrFCI...), swOK
		}
		return append([]byte(nil), c.curDF.fcp...), swOK
	case 0x01:
		switch {
		case c.app:
			return tlv(0x84, c.isdrAID...), swOK
		case c.curDF.aid != nil:
			return tlv(0x84, c.curDF.aid...), swOK
		}
		return nil, swOK
	case 0x0c:
		return nil, swOK
	}
	return nil, swWrongP1P2
}

// storeData implements the ISD-R's STORE DATA (80 E2): only GET EID.
func (c *Card) storeData(cmd card.Command) ([]byte, uint16) {
	if !c.app {
		return nil, swINS
	}
	if cmd.P1 != 0x91 || cmd.P2 != 0x00 {
		return nil, swWrongP1P2
	}
	if !bytes.HasPrefix(cmd.Data, getEIDTag) {
		return nil, swWrongData
	}
	eid := mustHex(c.cfg.EID)
	return append([]byte{0xbf, 0x3e, byte(2 + len(eid)), 0x5a, byte(len(eid))}, eid...), swOK
}
