package sim

import (
	"bytes"
	"encoding/hex"
	"strings"

	"github.com/wsrc-go/wsrc/card"
)

// fileKind is the structure of a node of the simulated file tree.
type fileKind int

const (
	kindDF          fileKind = iota // MF, DF or ADF
	kindTransparent                 // transparent EF
	kindLinear                      // linear fixed EF
)

// file is one node of the simulated file tree. Only data (of writable
// transparent EFs) changes after New; the Card's mutex guards it.
type file struct {
	fid      uint16
	aid      []byte // ADFs only
	kind     fileKind
	sfi      byte // 1..30, 0 = none
	fcp      []byte
	data     []byte // transparent EF contents
	records  [][]byte
	writable bool
	needsPIN bool // READ BINARY answers 6982 (no PIN is ever verified)
	parent   *file
	children []*file
}

func (f *file) add(children ...*file) {
	for _, ch := range children {
		ch.parent = f
		f.children = append(f.children, ch)
	}
}

func (f *file) child(fid uint16) *file {
	for _, ch := range f.children {
		if ch.fid == fid {
			return ch
		}
	}
	return nil
}

func (f *file) childBySFI(sfi byte) *file {
	for _, ch := range f.children {
		if ch.kind != kindDF && ch.sfi == sfi {
			return ch
		}
	}
	return nil
}

// Fixed identifiers of the simulated card.
const (
	fidMF    = 0x3f00
	fidDIR   = 0x2f00
	fidICCID = 0x2fe2
	fidARR   = 0x2f06
	fidBig   = 0x6f99
	fidADF   = 0x7fff
	fidIMSI  = 0x6f07
	fidAD    = 0x6fad

	// BigEFSize is the size of the large test EF 6F99 under the MF.
	BigEFSize = 4000
	dirRecLen = 0x26
)

var (
	// AIDISDR is the AID of the SGP.22 ISD-R.
	AIDISDR = mustHex("a0000005591010ffffffff8900000100")
	// AIDUSIM is the AID of the simulated ADF.USIM (Config.USIM).
	AIDUSIM = mustHex("a0000000871002ffffffff8907090000")

	// isdrFCI is the ISD-R's answer to SELECT, as the recorded card gave
	// it; isdrFCIFor puts another AID in it.
	isdrFCI = mustHex("6f2e8410a0000005591010ffffffff8900000100a51a730906072a864886fc6b019f6e0800000000000000009f6501ff")
	// pinStatus is the PIN status template DO of the MF and ADF.USIM.
	pinStatus = mustHex("900140830101 83010a")
)

// isdrFCIFor returns the ISD-R's FCI with aid as its AID (tag 84).
func isdrFCIFor(aid []byte) []byte {
	if bytes.Equal(aid, AIDISDR) {
		return isdrFCI
	}
	rest := isdrFCI[4+len(AIDISDR):] // after 6F L 84 10 <AID>
	return tlv(0x6f, append(tlv(0x84, aid...), rest...)...)
}

// buildTree returns the MF of a fresh card for cfg (already defaulted and
// valid) and the ADF.USIM (nil unless cfg.USIM).
func buildTree(cfg Config) (mf, adf *file) {
	mf = &file{fid: fidMF, kind: kindDF}
	mf.fcp = fcp(tlv(0x82, 0x78, 0x21), fid(fidMF),
		tlv(0xa5, tlv(0x80, 0x71)...), tlv(0x8a, 0x05), tlv(0x8b, 0x2f, 0x06, 0x01),
		tlv(0xc6, pinStatus...))

	dir := linearEF(fidDIR, 0x1e, 1, dirRecLen, 1)
	dir.records[0] = bytes.Repeat([]byte{0xff}, dirRecLen)
	if cfg.USIM {
		rec := tlv(0x61, append(tlv(0x4f, AIDUSIM...), tlv(0x50, []byte("USIM")...)...)...)
		copy(dir.records[0], rec)
	}

	iccid, _ := card.EncodeICCID(cfg.ICCID)
	ef := transparentEF(fidICCID, 0x02, iccid, 3)

	arr := linearEF(fidARR, 0x06, 0, 0x30, 4)
	for i, r := range []string{
		"8001019000800102a406830101950108800158a40683010a950108",
		"800101a406830101950108800102a406830101950108800158a40683010a950108",
		"80015ea40683010a950108800101900080011290",
		"800103900080011ca40683010a950108",
	} {
		copy(arr.records[i], mustHex(r))
	}

	big := make([]byte, BigEFSize)
	for i := range big {
		big[i] = byte(i % 251)
	}
	bigEF := transparentEF(fidBig, 0, big, 1)
	bigEF.writable = true

	mf.add(dir, ef, arr, bigEF)

	if cfg.USIM {
		imsi, _ := card.EncodeIMSI(cfg.IMSI)
		adf = &file{fid: fidADF, kind: kindDF, aid: AIDUSIM, parent: mf}
		adf.fcp = fcp(tlv(0x82, 0x78, 0x21), fid(fidADF), tlv(0x84, AIDUSIM...),
			tlv(0xa5, tlv(0x80, 0x71)...), tlv(0x8a, 0x05), tlv(0x8b, 0x2f, 0x06, 0x01),
			tlv(0xc6, pinStatus...))
		ef := transparentEF(fidIMSI, 0x07, imsi, 2)
		ef.needsPIN = cfg.IMSINeedsPIN
		adf.add(
			ef,
			transparentEF(fidAD, 0x03, []byte{0x00, 0x00, 0x00, 0x02}, 1),
		)
	}
	return mf, adf
}

func transparentEF(id uint16, sfi byte, data []byte, arrRec byte) *file {
	f := &file{fid: id, kind: kindTransparent, sfi: sfi, data: data}
	parts := [][]byte{tlv(0x82, 0x41, 0x21), fid(id), tlv(0x8a, 0x05), tlv(0x8b, 0x2f, 0x06, arrRec),
		tlv(0x80, byte(len(data)>>8), byte(len(data)))}
	if sfi != 0 {
		parts = append(parts, tlv(0x88, sfi<<3))
	}
	f.fcp = fcp(parts...)
	return f
}

func linearEF(id uint16, sfi byte, arrRec byte, recLen, n int) *file {
	f := &file{fid: id, kind: kindLinear, sfi: sfi}
	for range n {
		f.records = append(f.records, bytes.Repeat([]byte{0xff}, recLen))
	}
	size := recLen * n
	parts := [][]byte{tlv(0x82, 0x42, 0x21, byte(recLen>>8), byte(recLen), byte(n)), fid(id),
		tlv(0x8a, 0x05), tlv(0x8b, 0x2f, 0x06, arrRec), tlv(0x80, byte(size>>8), byte(size))}
	if sfi != 0 {
		parts = append(parts, tlv(0x88, sfi<<3))
	}
	f.fcp = fcp(parts...)
	return f
}

// tlv encodes one short BER-TLV (value below 128 bytes).
func tlv(tag byte, val ...byte) []byte {
	return append([]byte{tag, byte(len(val))}, val...)
}

func fid(id uint16) []byte { return tlv(0x83, byte(id>>8), byte(id)) }

func fcp(parts ...[]byte) []byte {
	return tlv(0x62, bytes.Join(parts, nil)...)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}
