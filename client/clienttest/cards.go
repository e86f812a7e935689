package clienttest

import (
	"fmt"
	"strings"

	"github.com/wsrc-go/wsrc/protocol"
)

// Script returns a Transmit function that answers from a table: command
// APDU in hex → response data and SW in hex ("...9000"), both of either
// case. Commands not in the table get SW 6A82 for SELECT (INS A4) and
// 6D00 for anything else. It panics on a malformed table entry.
func Script(table map[string]string) func(command []byte) ([]byte, uint16, error) {
	answers := make(map[string][]byte, len(table))
	for cmd, resp := range table {
		b, err := protocol.DecodeHex(resp)
		if err != nil || len(b) < 2 {
			panic(fmt.Sprintf("clienttest.Script: response %q for %s: want hex with an SW", resp, cmd))
		}
		answers[strings.ToLower(cmd)] = b
	}
	return func(command []byte) ([]byte, uint16, error) {
		r, ok := answers[fmt.Sprintf("%x", command)]
		if !ok {
			if len(command) >= 2 && command[1] == 0xa4 {
				return nil, 0x6a82, nil
			}
			return nil, 0x6d00, nil
		}
		n := len(r) - 2
		return append([]byte(nil), r[:n]...), uint16(r[n])<<8 | uint16(r[n+1]), nil
	}
}

// Identities of the eUICC in shared/protocol/transcript.md.
const (
	TranscriptATR   = "3b9f96801fc78031e073fe211b575352435653494da3"
	TranscriptEID   = "89049032123451234512345678901235"
	TranscriptICCID = "8949440000001155314"
)

// TranscriptCard returns the card of shared/protocol/transcript.md: the
// eUICC with its identities and the answers it gave there (SELECT MF,
// SELECT EF.ICCID, READ BINARY, SELECT ISD-R, GET EID).
func TranscriptCard() *Card {
	return &Card{
		Identities: protocol.Identities{
			protocol.IdentityATR:   TranscriptATR,
			protocol.IdentityEID:   TranscriptEID,
			protocol.IdentityICCID: TranscriptICCID,
		},
		Addr: protocol.RemoteAddr{IP: "127.0.0.1", Port: 37586},
		Transmit: Script(map[string]string{
			"00a40004023f00": "62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a9000",
			"00a40004022fe2": "62178202412183022fe28a01058b032f06038002000a8801109000",
			"00b000000a":     "989444000000115513f49000",
			"00b0000000":     "989444000000115513f49000",
			"00a4040410a0000005591010ffffffff8900000100": "6f2e8410a0000005591010ffffffff8900000100a51a730906072a864886fc6b019f6e0800000000000000009f6501ff9000",
			"80e2910006bf3e035c015a":                     "bf3e125a10890490321234512345123456789012359000",
		}),
	}
}
