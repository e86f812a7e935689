package server

import (
	"fmt"
	"log/slog"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// What a real card and agent can have. A card agent is not trusted to
// keep to it: hello values beyond these bounds are refused, identities a
// card's answers would give beyond them are dropped, so that no agent
// can make list_cards_ack (which every user who may see the card gets)
// large.
const (
	// MaxATRLen is the longest ATR: TS and 32 more bytes (ISO/IEC 7816-3).
	MaxATRLen = 33
	// MaxNameLen bounds the agent and reader names a card agent sends in
	// hello, in bytes. PC/SC reader names are under 100 bytes.
	MaxNameLen = 128
	// maxVersionLen bounds hello's version.
	maxVersionLen = 64
)

// checkCardHello says what is wrong with a card agent's hello, or "".
func checkCardHello(h protocol.Hello) string {
	switch {
	case len(h.ATR) == 0:
		return "empty atr"
	case len(h.ATR) > MaxATRLen:
		return fmt.Sprintf("atr is %d bytes; an ATR has at most %d", len(h.ATR), MaxATRLen)
	case len(h.Agent) > MaxNameLen:
		return fmt.Sprintf("agent name is %d bytes; the limit is %d", len(h.Agent), MaxNameLen)
	case len(h.Reader) > MaxNameLen:
		return fmt.Sprintf("reader name is %d bytes; the limit is %d", len(h.Reader), MaxNameLen)
	case len(h.Version) > maxVersionLen:
		return fmt.Sprintf("version is %d bytes; the limit is %d", len(h.Version), maxVersionLen)
	}
	return ""
}

// identityLimits are the forms a card's identities can have: hex digits
// (ICCIDs and IMSIs are BCD, but some cards use the other nibbles), and
// at most this many (an EID exactly so many).
var identityLimits = map[string]struct{ min, max int }{
	protocol.IdentityICCID: {1, 20},  // ITU-T E.118: 19 or 20 digits; 20 nibbles in EF.ICCID
	protocol.IdentityEID:   {32, 32}, // GSMA SGP.29: 32 digits
	protocol.IdentityIMSI:  {6, 15},  // ITU-T E.212
}

// plausible keeps of found only the identities a card can really have;
// the others are logged and dropped (the card stays usable by the rest).
func plausible(found card.Identity, log *slog.Logger) card.Identity {
	check := func(key, v string) string {
		lim := identityLimits[key]
		if v == "" {
			return ""
		}
		ok := len(v) >= lim.min && len(v) <= lim.max
		for i := 0; ok && i < len(v); i++ {
			c := v[i]
			ok = '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
		}
		if !ok {
			shown := v
			if len(shown) > 40 {
				shown = shown[:40] + "…"
			}
			log.Warn("card identity dropped: not what a card can have", "identity", key, "length", len(v), "value", shown)
			return ""
		}
		return v
	}
	return card.Identity{ICCID: check(protocol.IdentityICCID, found.ICCID), EID: check(protocol.IdentityEID, found.EID),
		IMSI: check(protocol.IdentityIMSI, found.IMSI)}
}
