package server

import (
	"testing"
	"testing/synctest"

	"github.com/gorilla/websocket"
)

// A second agent presenting the ICCID of a card another agent has listed
// is refused, logged, counted and remembered; a user selecting by the
// ICCID gets the real card; the same agent presenting the card again
// (another reader) is not a conflict. Issue 10, point 6.
func TestDuplicateIdentityRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		e := newEnv(t, Config{Auth: testAuth(t), Observer: rec})
		real := e.authCard("192.0.2.1:5000", "Authorization", bearer(tokPi1))
		uiccHello(t, real, "3b00", "pi1", "r0", efICCID8901)
		expectJSON(t, real.Recv(), stateReady)

		impostor := e.authCard("198.51.100.9:5000", "Authorization", bearer(tokPi2))
		uiccHello(t, impostor, "3b01", "pi2", "r0", efICCID8901)
		expectError(t, impostor.Recv(), "card refused: a card with ICCID 8901000000000000000 is already connected through another agent")
		expectClosed(t, impostor, websocket.ClosePolicyViolation, "duplicate card identity")

		// The user who selects by ICCID reaches pi1's card.
		u := e.authUser(bearer(tokRoot))
		selectCard(t, u, "iccid", "8901000000000000000", `{"ATR": "3b00", "ICCID": "8901000000000000000"}`)
		expectJSON(t, real.Recv(), stateAssoc)

		if n := rec.count(string(RefusedDuplicate)); n != 1 {
			t.Errorf("%d duplicate refusals counted, want 1", n)
		}
		cs := e.srv.Conflicts()
		if len(cs) != 1 || cs[0].Agent != "pi2" || cs[0].Holder != "pi1" || cs[0].Identity != "ICCID" ||
			cs[0].Value != "8901000000000000000" || cs[0].Remote != "198.51.100.9:5000" {
			t.Fatalf("conflicts %+v", cs)
		}

		// pi1 itself may present it in another reader (the card moved).
		moved := e.authCard("192.0.2.1:5001", "Authorization", bearer(tokPi1))
		uiccHello(t, moved, "3b00", "pi1", "r1", efICCID8901)
		expectJSON(t, moved.Recv(), stateReady)
	})
}

// On an open card port an anonymous agent is told apart by its name and
// address: the same ICCID from another address is refused, from the same
// one (pySim's card client reconnecting) it is not.
func TestDuplicateIdentityAnonymous(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		a := e.card("192.0.2.1:5000")
		uiccHello(t, a, "3b00", "", "", efICCID8901)
		expectJSON(t, a.Recv(), stateReady)
		again := e.card("192.0.2.1:5001")
		uiccHello(t, again, "3b00", "", "", efICCID8901)
		expectJSON(t, again.Recv(), stateReady)
		other := e.card("203.0.113.5:5000")
		uiccHello(t, other, "3b00", "", "", efICCID8901)
		expectError(t, other.Recv(), "already connected through another agent")
		expectClosed(t, other, websocket.ClosePolicyViolation, "duplicate card identity")
	})
}
