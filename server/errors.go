package server

import (
	"errors"
	"fmt"
)

// Why a step of the relay did not happen. Each error's text is what the
// peer is told, as it is.

// errNoRequest: a reply came with no request outstanding.
var errNoRequest = errors.New("no request is outstanding")

// waitingForError: a reply of the wrong type came; the server waits for
// another.
type waitingForError struct{ want string }

func (e *waitingForError) Error() string { return "the server is waiting for " + e.want }

// cardGoneError: the card connection ended; reason says why.
type cardGoneError struct{ reason string }

func (e *cardGoneError) Error() string { return "card disconnected: " + e.reason }

// errWithdrawnCard: a reload of the accounts took the user's card away.
var errWithdrawnCard = errors.New(errWithdrawn)

// selectFailure is a kind of selectError.
type selectFailure int

const (
	selectNotConnected selectFailure = iota // no such card (that the user may see)
	selectDisconnected                      // it was there, and left meanwhile
	selectInUse                             // another user has it
	selectIdentifying                       // not identified yet
)

// selectError says why select_card found no card to take.
type selectError struct {
	kind         selectFailure
	key, value   string // what the user asked for
	unidentified int    // cards (the user may see) still being identified
}

func (e *selectError) Error() string {
	switch e.kind {
	case selectDisconnected:
		return fmt.Sprintf("card %s %s disconnected", e.key, e.value)
	case selectInUse:
		return fmt.Sprintf("card %s %s is in use by another user", e.key, e.value)
	case selectIdentifying:
		return fmt.Sprintf("card %s %s is still being identified; try again in a moment", e.key, e.value)
	}
	if e.unidentified > 0 {
		return fmt.Sprintf("no card with %s %s is connected (%d card(s) still being identified; try again in a moment)", e.key, e.value, e.unidentified)
	}
	return fmt.Sprintf("no card with %s %s is connected", e.key, e.value)
}
