package trace

import "github.com/wsrc-go/wsrc/card"

// AppendSIMAPDU appends the GSMTAP SIM APDU payload for one exchange: the
// command as a T=0 TPDU (CLA INS P1 P2 P3 [data]), then the response data,
// then SW1 SW2. That is the layout SIMtrace and osmo-remsim emit and the
// one Wireshark's gsm_sim dissector reads: it takes P3 from the fifth byte
// and the status word from the last two.
//
// The command is rewritten only where its ISO/IEC 7816-4 form differs
// from the T=0 one: a case 1 command (4 bytes) gets P3=00, and a short
// case 4 command loses its trailing Le (T=0 has no room for it; the card
// answers 61xx instead). Extended-length commands have no T=0 form and
// are written as they are, as are commands that do not parse; Wireshark
// then shows their lengths as it finds them. The log sink always shows
// the command exactly as relayed.
func AppendSIMAPDU(b, command, response []byte, sw uint16) []byte {
	b = append(b, tpdu(command)...)
	if len(command) == 4 {
		b = append(b, 0x00)
	}
	b = append(b, response...)
	return append(b, byte(sw>>8), byte(sw))
}

// tpdu returns the part of command that the T=0 form keeps: all of it but
// a short case 4 command's Le.
func tpdu(command []byte) []byte {
	c, err := card.ParseCommand(command)
	if err == nil && !c.Extended && len(c.Data) > 0 && c.Ne > 0 {
		return command[:5+len(c.Data)]
	}
	return command
}
