package server

import (
	"slices"
	"strings"
	"sync"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
)

// hub is the registry of card connections that users list and select.
type hub struct {
	mu    sync.Mutex  // guards cards and slots, and each card's state and id
	cards []*cardConn // in connection order (list order, and select picks the first match)
	// slots maps each agent name and reader (cardConn.slot) to its newest
	// connection: a new hello for the same slot replaces the old one.
	slots map[string]*cardConn
}

// add lists cc. When cc's slot is taken, cc takes it over and the
// previous holder is returned: the caller ends it.
func (h *hub) add(cc *cardConn) (replaced *cardConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cards = append(h.cards, cc)
	if cc.slot != "" {
		if h.slots == nil {
			h.slots = make(map[string]*cardConn)
		}
		replaced = h.slots[cc.slot]
		h.slots[cc.slot] = cc
	}
	return replaced
}

func (h *hub) remove(cc *cardConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cc.slot != "" && h.slots[cc.slot] == cc {
		delete(h.slots, cc.slot)
	}
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

// list returns the cards who may use as list_cards_ack shows them, with
// the agents' addresses when showAddr, narrowed by q (its IDType a
// canonical key or ""); and how many matched before q.Limit.
func (h *hub) list(who principal, showAddr bool, q protocol.ListCards) (cards []protocol.CardInfo, total int) {
	var want string
	if q.IDType != "" {
		want = normalizeID(q.IDType, q.IDStr)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.cards)
	if q.Filtered() {
		n = min(n, 16) // usually a few
	}
	out := make([]protocol.CardInfo, 0, n)
	for _, cc := range h.cards {
		switch {
		case !who.mayUse(cc),
			q.Agent != "" && cc.agent != q.Agent,
			q.Reader != "" && cc.hello.Reader != q.Reader,
			q.IDType != "" && (cc.id.get(q.IDType) == "" || normalizeID(q.IDType, cc.id.get(q.IDType)) != want):
			continue
		}
		total++
		if q.Limit > 0 && len(out) >= q.Limit {
			continue
		}
		ci := protocol.CardInfo{
			RemoteAddr: hiddenAddr,
			Identities: cc.id.identities(),
			State:      cc.state,
			Agent:      cc.agent,
			Reader:     cc.hello.Reader,
		}
		if showAddr {
			ci.RemoteAddr = cc.c.remote
		}
		out = append(out, ci)
	}
	return out, total
}

// mayUse reports whether the principal may list and select cc (an
// anonymous one may use every card). hub.mu must be held.
func (p principal) mayUse(cc *cardConn) bool {
	return p.Principal == nil || p.MayUse(cc.accessCard())
}

// accessCard describes cc to access rules. hub.mu must be held.
func (cc *cardConn) accessCard() auth.Card {
	return auth.Card{Agent: cc.agent, Reader: cc.hello.Reader, ATR: cc.id.atr, ICCID: cc.id.iccid, EID: cc.id.eid}
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

// find looks for a card who may use whose identity key equals value. It
// returns the first ready match; failing that, a *selectError. Cards who
// may not use are not there as far as who can tell.
func (h *hub) find(key, value string, who principal) (*cardConn, error) {
	want := normalizeID(key, value)
	h.mu.Lock()
	defer h.mu.Unlock()
	inUse, identifying, unidentified := false, false, 0
	for _, cc := range h.cards {
		if !who.mayUse(cc) {
			continue
		}
		if cc.state == protocol.StateInit {
			unidentified++
		}
		v := cc.id.get(key)
		if v == "" || normalizeID(key, v) != want {
			continue
		}
		switch cc.state {
		case protocol.StateReady:
			return cc, nil
		case protocol.StateAssociated:
			inUse = true
		default:
			identifying = true
		}
	}
	e := &selectError{kind: selectNotConnected, key: key, value: value, unidentified: unidentified}
	switch {
	case inUse:
		e.kind = selectInUse
	case identifying:
		e.kind = selectIdentifying
	}
	return nil, e
}
