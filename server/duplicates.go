package server

import (
	"fmt"
	"sync"
	"time"

	"github.com/wsrc-go/wsrc/internal/auth"
	"github.com/wsrc-go/wsrc/protocol"
)

// A card is in one reader at a time, so a second connection presenting
// the ICCID or EID of a card already listed, from another agent, is
// either a mistake (two agents sharing a token, a cloned card) or an
// impostor waiting for a user who selects by that identity. It is
// refused at the end of its identification, before users can see it;
// the same agent presenting the card again (the card moved to another of
// its readers, or a reconnect while the old connection is still up) is
// not a conflict.

// owner names who presents a card: the authenticated agent, else (an
// open card port) the agent name from hello together with the client
// address, which is the most an anonymous agent can be told apart by.
func (cc *cardConn) owner() string {
	if cc.c.name != "" {
		return "agent " + cc.c.name
	}
	return "anonymous " + cc.hello.Agent + " at " + auth.ClientKey(cc.c.addr)
}

// conflictWith returns the listed card, from another owner, that has
// one of id's unique identities (ICCID, EID), and that identity's key.
// hub.mu must be held.
func (h *hub) conflictWith(cc *cardConn, id identity) (*cardConn, string) {
	owner := cc.owner()
	for _, other := range h.cards {
		if other == cc || other.state == protocol.StateInit || other.owner() == owner {
			continue
		}
		switch {
		case id.iccid != "" && normalizeID(protocol.IdentityICCID, other.id.iccid) == normalizeID(protocol.IdentityICCID, id.iccid):
			return other, protocol.IdentityICCID
		case id.eid != "" && other.id.eid == id.eid:
			return other, protocol.IdentityEID
		}
	}
	return nil, ""
}

// Conflict is a card refused because another agent's connection already
// had one of its identities.
type Conflict struct {
	Time     time.Time
	Identity string // protocol.IdentityICCID or IdentityEID
	Value    string
	Agent    string // the refused card's agent (as in CardStatus.Agent)
	Reader   string
	Remote   string // the refused agent's address
	Holder   string // the agent that has the card listed
	// HolderRemote is the listed card's agent's address.
	HolderRemote string
}

// maxConflicts is how many recent conflicts Server.Conflicts keeps.
const maxConflicts = 32

// conflicts is a ring of the most recent conflicts.
type conflicts struct {
	mu   sync.Mutex
	ring []Conflict // oldest first once full
	next int
}

func (r *conflicts) add(c Conflict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ring) < maxConflicts {
		r.ring = append(r.ring, c)
		return
	}
	r.ring[r.next] = c
	r.next = (r.next + 1) % maxConflicts
}

// Conflicts returns the most recent cards refused as duplicates of a
// listed card (at most 32), newest first.
func (s *Server) Conflicts() []Conflict {
	r := &s.conflicts
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Conflict, 0, len(r.ring))
	for i := range r.ring {
		out = append(out, r.ring[(r.next+len(r.ring)-1-i)%len(r.ring)])
	}
	return out
}

// duplicateText is the error a refused duplicate's agent gets. It names
// neither the other agent nor its address.
func duplicateText(key, value string) string {
	return fmt.Sprintf("card refused: a card with %s %s is already connected through another agent; a card can be in one reader only. "+
		"If it was moved, try again once its old connection has ended; if two agents share a name or token, give each its own", key, value)
}
