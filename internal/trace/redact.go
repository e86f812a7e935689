package trace

import "github.com/wsrc-go/wsrc/card"

// Redaction policy. Redacted bytes are overwritten with 0xFF, keeping
// their number, so that every length field stays true and Wireshark still
// decodes the command; the header (CLA INS P1 P2), the length bytes and
// the status word are never touched. The package doc lists what is
// redacted and why; this file is the one place that decides it.

// Redacted says which parts of an exchange the policy overwrote.
type Redacted uint8

const (
	// RedactedCommand: the command data field was overwritten.
	RedactedCommand Redacted = 1 << iota
	// RedactedResponse: the response data (not the SW) was overwritten.
	RedactedResponse
)

// String returns "", "cmd", "rsp" or "cmd+rsp".
func (r Redacted) String() string {
	switch r {
	case RedactedCommand:
		return "cmd"
	case RedactedResponse:
		return "rsp"
	case RedactedCommand | RedactedResponse:
		return "cmd+rsp"
	}
	return ""
}

const fill = 0xFF

// Instructions whose command data is a secret whatever the class byte.
const (
	insVerify          = 0x20 // VERIFY (PIN)
	insVerifyOdd       = 0x21 // VERIFY, BER-TLV form
	insChangeRefData   = 0x24 // CHANGE REFERENCE DATA (old and new PIN)
	insDisableVerif    = 0x26 // DISABLE VERIFICATION REQUIREMENT (PIN)
	insEnableVerif     = 0x28 // ENABLE VERIFICATION REQUIREMENT (PIN)
	insResetRetry      = 0x2C // RESET RETRY COUNTER / UNBLOCK PIN (PUK, new PIN)
	insExternalAuth    = 0x82 // EXTERNAL / MUTUAL AUTHENTICATE (cryptogram)
	insGeneralAuth     = 0x86 // GENERAL AUTHENTICATE
	insGeneralAuthOdd  = 0x87
	insAuthenticate    = 0x88 // AUTHENTICATE / RUN GSM ALGORITHM / INTERNAL AUTHENTICATE
	insAuthenticateOdd = 0x89
)

// GlobalPlatform instructions, redacted only under a proprietary class
// byte (b8 set): with an inter-industry class 0xE2 is APPEND RECORD.
const (
	insInitUpdate = 0x50 // INITIALIZE UPDATE: card cryptogram in the response
	insPutKey     = 0xD8 // PUT KEY: key values
	insStoreData  = 0xE2 // STORE DATA: personalisation data, eUICC ES10x
)

// Instructions the file-state part of the policy follows.
const (
	insSelect        = 0xA4
	insReadBinary    = 0xB0
	insReadBinaryOdd = 0xB1
	insReadRecord    = 0xB2
	insReadRecordOdd = 0xB3
	insUpdBinary     = 0xD6
	insUpdBinaryOdd  = 0xD7
	insUpdRecord     = 0xDC
	insUpdRecordOdd  = 0xDD
	insGetResponse   = 0xC0
	insManageChannel = 0x70
)

// es10Allowed holds the second tag byte of the SGP.22 ES10 requests
// (tag BFxx) whose STORE DATA stays readable: they carry identifiers,
// profile state and signed public data, no keys and no activation codes.
// Everything else under STORE DATA is redacted, among them BF21
// PrepareDownload (hashed confirmation code), BF36 BoundProfilePackage
// (session keys, profile data), BF38 AuthenticateServer (matching ID) and
// any request this list does not know.
var es10Allowed = [256]bool{
	0x20: true, // GetEuiccInfo1
	0x22: true, // GetEuiccInfo2
	0x28: true, // ListNotification
	0x29: true, // SetNickname
	0x2B: true, // RetrieveNotificationsList
	0x2D: true, // ProfileInfoList
	0x2E: true, // GetEuiccChallenge
	0x30: true, // NotificationSent
	0x31: true, // EnableProfile
	0x32: true, // DisableProfile
	0x33: true, // DeleteProfile
	0x34: true, // EuiccMemoryReset
	0x3C: true, // EuiccConfiguredAddresses
	0x3E: true, // GetEuiccData (EID)
	0x3F: true, // SetDefaultDpAddress
	0x41: true, // CancelSession
	0x43: true, // GetRAT
}

// keyFIDs are the elementary files that hold session keys or security
// contexts (3GPP TS 31.102, TS 51.011): reads of them lose their response
// data, updates their command data.
var keyFIDs = map[uint16]bool{
	0x6F08: true, // EF.Keys (ADF.USIM): CK, IK
	0x6F09: true, // EF.KeysPS (ADF.USIM): CK, IK for PS
	0x6FE4: true, // EF.EPSNSC (ADF.USIM): K_ASME
	0x6F20: true, // EF.Kc (DF.GSM)
	0x6F52: true, // EF.KcGPRS (DF.GSM)
	0x4F20: true, // EF.Kc (DF.GSM-ACCESS)
	0x4F52: true, // EF.KcGPRS (DF.GSM-ACCESS)
	0x4F03: true, // EF.5GS3GPPNSC (DF.5GS): K_AMF
	0x4F04: true, // EF.5GSN3GPPNSC (DF.5GS)
	0x4F05: true, // EF.5GAUTHKEYS (DF.5GS): K_AUSF, K_SEAF
}

// dfKind is what the policy knows of a channel's current DF: enough to
// tell which short file identifiers (SFI) name key files.
type dfKind uint8

const (
	dfUnknown   dfKind = iota // not known: every key SFI counts
	dfOther                   // MF or a DF without key files
	dfADF                     // an ADF (USIM): SFI 08, 09, 18
	df5GS                     // DF.5GS (5FC0): SFI 03, 04, 05
	dfGSMAccess               // DF.GSM-ACCESS (5F3B): SFI 01, 02
)

// sfiIsKey reports whether short file identifier sfi names a key file
// under a DF of kind df.
func sfiIsKey(df dfKind, sfi byte) bool {
	switch df {
	case dfADF:
		return sfi == 0x08 || sfi == 0x09 || sfi == 0x18
	case df5GS:
		return sfi >= 0x03 && sfi <= 0x05
	case dfGSMAccess:
		return sfi == 0x01 || sfi == 0x02
	case dfOther:
		return false
	}
	return sfi >= 0x01 && sfi <= 0x05 || sfi == 0x08 || sfi == 0x09 || sfi == 0x18
}

// dfOf returns the kind of the DF with identifier fid.
func dfOf(fid uint16) dfKind {
	switch fid {
	case 0x7FFF:
		return dfADF
	case 0x5FC0:
		return df5GS
	case 0x5F3B:
		return dfGSMAccess
	}
	return dfOther
}

// isDF reports whether fid names the MF or a DF (TS 102 221 clause 8.2:
// DFs start with 7F or 5F, EFs with 2F, 6F or 4F).
func isDF(fid uint16) bool {
	hi := byte(fid >> 8)
	return fid == 0x3F00 || hi == 0x7F || hi == 0x5F
}

// efKind is what the policy knows of a channel's current EF.
type efKind uint8

const (
	efUnknown efKind = iota // not known: treated as a key file
	efNone                  // none, or one without keys
	efKey                   // a key file
)

func efFor(fid uint16) efKind {
	if keyFIDs[fid] {
		return efKey
	}
	return efNone
}

// swNoAnswer is the SW of an exchange that got no answer (see Event.SW):
// no card sends 0000.
const swNoAnswer = 0x0000

// pendKind says whether a GET RESPONSE on the channel would fetch the rest
// of a redacted response (T=0: 61xx, GSM: 9Fxx).
type pendKind uint8

const (
	pendUnknown pendKind = iota // not known: treated as pending
	pendNone
	pendSecret
)

// chanState is the policy's view of one logical channel. The zero value
// knows nothing, which the policy treats as the worst case.
type chanState struct {
	df   dfKind
	ef   efKind
	pend pendKind
}

// numChannels covers the basic channel, 1..3 and the further channels
// 4..19 that ISO/IEC 7816-4 class bytes can address.
const numChannels = 20

// cardState is the policy's view of one card connection.
type cardState struct {
	ch [numChannels]chanState
}

// reset is the state after an ATR: the basic channel is at the MF with
// no EF and nothing pending; the other channels are closed.
func (c *cardState) reset() {
	*c = cardState{}
	c.ch[0] = chanState{df: dfOther, ef: efNone, pend: pendNone}
}

// channelOf returns the logical channel a class byte addresses.
func channelOf(cla byte) int {
	if cla&0x40 != 0 { // further inter-industry (and the matching proprietary) classes
		return 4 + int(cla&0x0F)
	}
	return int(cla & 0x03)
}

// redact applies the policy to one exchange in place and returns what it
// overwrote; see decide.
func redact(st *cardState, cmd, resp []byte, sw uint16) Redacted {
	r := decide(st, cmd, resp, sw)
	apply(r, cmd, resp)
	return r
}

// apply overwrites the parts r names.
func apply(r Redacted, cmd, resp []byte) {
	if r&RedactedCommand != 0 {
		fillBytes(commandData(cmd))
	}
	if r&RedactedResponse != 0 {
		fillBytes(resp)
	}
}

// decide returns which parts of one exchange the policy hides, and
// updates card state st from it (file selection, pending responses). It
// does not change cmd or resp. st may be nil: then nothing is known of the
// card.
func decide(st *cardState, cmd, resp []byte, sw uint16) Redacted {
	if len(cmd) < 4 {
		return 0 // not an APDU: nothing to recognise, nothing to hide
	}
	if st == nil {
		st = &cardState{}
	}
	cla, ins, p1, p2 := cmd[0], cmd[1], cmd[2], cmd[3]
	ch := &st.ch[channelOf(cla)]
	ok := swSuccess(sw)
	var r Redacted

	switch ins {
	case insVerify, insVerifyOdd, insChangeRefData, insDisableVerif, insEnableVerif,
		insResetRetry, insExternalAuth:
		r |= RedactedCommand
	case insGeneralAuth, insGeneralAuthOdd, insAuthenticate, insAuthenticateOdd:
		r |= RedactedCommand | RedactedResponse
	case insPutKey:
		if proprietary(cla) {
			r |= RedactedCommand
		}
	case insInitUpdate:
		if proprietary(cla) {
			r |= RedactedResponse
		}
	case insStoreData:
		if proprietary(cla) && !es10Readable(cmd) {
			r |= RedactedCommand
		}
	case insSelect:
		if ok {
			ch.selectFile(p1, commandData(cmd))
		}
	case insReadBinary, insUpdBinary: // P1 = 100x xxxx: SFI in b5..b1
		if ch.fileIsKey(p1&0x80 != 0, p1&0x1F, ok) {
			r |= dataPart(ins == insReadBinary)
		}
	case insReadRecord, insUpdRecord: // P2 b8..b4: SFI; 0 (and RFU 1F) the current EF
		if sfi := p2 >> 3; ch.fileIsKey(sfi != 0 && sfi != 0x1F, sfi, ok) {
			r |= dataPart(ins == insReadRecord)
		}
	case insReadBinaryOdd, insUpdBinaryOdd, insReadRecordOdd, insUpdRecordOdd:
		// P1-P2 name the file: 0000 the current EF, 00 + SFI, or a FID.
		fid := uint16(p1)<<8 | uint16(p2)
		var key bool
		switch {
		case fid == 0:
			key = ch.ef != efNone
		case p1 == 0 && p2 < 0x20:
			key = sfiIsKey(ch.df, p2)
		default:
			key = keyFIDs[fid]
		}
		if key {
			r |= dataPart(ins == insReadBinaryOdd || ins == insReadRecordOdd)
		}
	case insGetResponse:
		if ch.pend != pendNone {
			r |= RedactedResponse
		}
	case insManageChannel:
		st.manageChannel(ch, p1, p2, resp, ok)
	}

	// SW 0000 (no status word: the exchange failed, the command may or
	// may not have reached the card) leaves the channel's state unknown.
	if sw == swNoAnswer {
		*ch = chanState{}
		return r
	}
	// A redacted response can continue in GET RESPONSE on this channel;
	// any other command ends what was pending.
	if more := byte(sw>>8) == 0x61 || byte(sw>>8) == 0x9F; r&RedactedResponse != 0 && more {
		ch.pend = pendSecret
	} else {
		ch.pend = pendNone
	}
	return r
}

// fileIsKey reports whether a read or update addresses a key file: the
// one with short file identifier sfi when hasSFI, else the current EF. A
// successful access by SFI makes that file the current EF.
func (c *chanState) fileIsKey(hasSFI bool, sfi byte, ok bool) bool {
	if !hasSFI {
		return c.ef != efNone
	}
	key := sfiIsKey(c.df, sfi)
	if ok {
		c.ef = efOfBool(key)
	}
	return key
}

// dataPart returns RedactedResponse for a read, RedactedCommand for a
// write.
func dataPart(read bool) Redacted {
	if read {
		return RedactedResponse
	}
	return RedactedCommand
}

func efOfBool(key bool) efKind {
	if key {
		return efKey
	}
	return efNone
}

// swSuccess reports whether a status word means the command was carried
// out (normal processing or a warning): only then does a SELECT change
// the current file.
func swSuccess(sw uint16) bool {
	switch byte(sw >> 8) {
	case 0x90, 0x91, 0x92, 0x61, 0x9F, 0x62, 0x63:
		return true
	}
	return false
}

// proprietary reports whether a class byte is proprietary (b8 set, not
// the invalid FF): GlobalPlatform, ETSI TS 102 221 and GSM 11.11 classes.
func proprietary(cla byte) bool { return cla&0x80 != 0 && cla != 0xFF }

// es10Readable reports whether a STORE DATA command is a complete,
// single-block SGP.22 ES10 request on the allow-list.
func es10Readable(cmd []byte) bool {
	p1, p2 := cmd[2], cmd[3]
	d := commandData(cmd)
	return p1&0x80 != 0 && p2 == 0 && len(d) >= 2 && d[0] == 0xBF && es10Allowed[d[1]]
}

// commandData returns the command data field of cmd, aliasing it. A
// command whose lengths do not add up is taken to have everything after
// P3 as data, so that redaction errs on the side of hiding.
func commandData(cmd []byte) []byte {
	c, err := card.ParseCommand(cmd)
	if err != nil {
		if len(cmd) > 5 {
			return cmd[5:]
		}
		return nil
	}
	if len(c.Data) == 0 {
		return nil
	}
	off := 5
	if c.Extended {
		off = 7
	}
	return cmd[off : off+len(c.Data)]
}

func fillBytes(b []byte) {
	for i := range b {
		b[i] = fill
	}
}

// selectFile follows a successful SELECT (ISO/IEC 7816-4, TS 102 221
// clause 11.1.1) with P1 p1 and command data d.
func (c *chanState) selectFile(p1 byte, d []byte) {
	switch p1 {
	case 0x00: // by FID: MF, DF, EF; no data = MF
		if len(d) == 0 {
			c.df, c.ef = dfOther, efNone
			return
		}
		if len(d) != 2 {
			c.df, c.ef = dfUnknown, efUnknown
			return
		}
		c.enter(uint16(d[0])<<8 | uint16(d[1]))
	case 0x01: // child DF
		if len(d) != 2 {
			c.df, c.ef = dfUnknown, efUnknown
			return
		}
		c.df, c.ef = dfOf(uint16(d[0])<<8|uint16(d[1])), efNone
	case 0x02: // EF under the current DF
		if len(d) != 2 {
			c.ef = efUnknown
			return
		}
		c.ef = efFor(uint16(d[0])<<8 | uint16(d[1]))
	case 0x03: // parent DF: which one is not tracked
		c.df, c.ef = dfUnknown, efNone
	case 0x04: // by DF name (AID): an ADF, or an application like ISD-R
		c.df, c.ef = dfADF, efNone
	case 0x08, 0x09: // path from the MF / from the current DF
		if len(d) == 0 || len(d)%2 != 0 {
			c.df, c.ef = dfUnknown, efUnknown
			return
		}
		if p1 == 0x08 {
			c.df, c.ef = dfOther, efNone
		}
		for i := 0; i < len(d); i += 2 {
			c.enter(uint16(d[i])<<8 | uint16(d[i+1]))
		}
	default:
		c.df, c.ef = dfUnknown, efUnknown
	}
}

// enter follows the selection of one file by FID.
func (c *chanState) enter(fid uint16) {
	if isDF(fid) {
		c.df, c.ef = dfOf(fid), efNone
		return
	}
	c.ef = efFor(fid)
}

// manageChannel follows MANAGE CHANNEL on channel from: an opened channel
// starts with the opening channel's state (the conservative reading of
// TS 102 221 clause 11.1.17), a closed one forgets it.
func (s *cardState) manageChannel(from *chanState, p1, p2 byte, resp []byte, ok bool) {
	if !ok {
		return
	}
	switch p1 {
	case 0x00: // open: P2 names the channel, or 00 and the card picks it
		n := int(p2)
		if n == 0 && len(resp) > 0 {
			n = int(resp[0])
		}
		if n > 0 && n < numChannels {
			s.ch[n] = *from
		}
	case 0x80: // close channel P2
		if n := int(p2); n > 0 && n < numChannels {
			s.ch[n] = chanState{}
		}
	}
}
