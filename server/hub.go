package server

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// hub is the registry of card connections that users list and select.
type hub struct {
	mu    sync.Mutex  // guards cards, and each card's state and id
	cards []*cardConn // in connection order (list order, and select picks the first match)
}

func (h *hub) add(cc *cardConn) {
	h.mu.Lock()
	h.cards = append(h.cards, cc)
	h.mu.Unlock()
}

func (h *hub) remove(cc *cardConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.cards {
		if x == cc {
			h.cards = slices.Delete(h.cards, i, i+1) // zeroes the freed slot
			return
		}
	}
}

// hiddenAddr is what users see as a card's remote_addr unless
// Config.ShowRemoteAddr is set.
var hiddenAddr = protocol.RemoteAddr{IP: "0.0.0.0", Port: 0}

// list returns the cards as list_cards_ack shows them.
func (h *hub) list(showAddr bool) []protocol.CardInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]protocol.CardInfo, len(h.cards))
	for i, cc := range h.cards {
		out[i] = protocol.CardInfo{
			RemoteAddr: hiddenAddr,
			Identities: cc.id.identities(),
			State:      cc.state,
			Agent:      cc.hello.Agent,
			Reader:     cc.hello.Reader,
		}
		if showAddr {
			out[i].RemoteAddr = cc.c.remote
		}
	}
	return out
}

// identityKeys are the id_type values select_card accepts (any case).
var identityKeys = []string{protocol.IdentityATR, protocol.IdentityEID, protocol.IdentityICCID, protocol.IdentityIMSI}

// identityKey returns the canonical identity key for an id_type, or "".
func identityKey(idType string) string {
	for _, k := range identityKeys {
		if strings.EqualFold(idType, k) {
			return k
		}
	}
	return ""
}

// normalizeID puts an identity value in the form used for matching:
// lower case, and for ICCIDs without trailing f padding (pySim-shell can
// only send a 19-digit ICCID with its pad).
func normalizeID(key, v string) string {
	if key == protocol.IdentityICCID {
		return card.NormalizeICCID(v)
	}
	return strings.ToLower(v)
}

// find looks for a card whose identity key equals value. It returns the
// first ready match; failing that, nil and the reason to give the user.
func (h *hub) find(key, value string) (*cardConn, string) {
	want := normalizeID(key, value)
	h.mu.Lock()
	defer h.mu.Unlock()
	inUse, identifying, unidentified := false, false, 0
	for _, cc := range h.cards {
		if cc.state == protocol.StateInit {
			unidentified++
		}
		v := cc.id.get(key)
		if v == "" || normalizeID(key, v) != want {
			continue
		}
		switch cc.state {
		case protocol.StateReady:
			return cc, ""
		case protocol.StateAssociated:
			inUse = true
		default:
			identifying = true
		}
	}
	switch {
	case inUse:
		return nil, fmt.Sprintf("card %s %s is in use by another user", key, value)
	case identifying:
		return nil, fmt.Sprintf("card %s %s is still being identified; try again in a moment", key, value)
	case unidentified > 0:
		return nil, fmt.Sprintf("no card with %s %s is connected (%d card(s) still being identified; try again in a moment)", key, value, unidentified)
	}
	return nil, fmt.Sprintf("no card with %s %s is connected", key, value)
}
