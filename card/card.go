// Package card is the one view of a smart card that everything above the
// backends uses: the Card interface (ATR, Transmit, Reset, Close) that the
// CCID, PC/SC and simulated backends implement, plus what can be built on
// any Card: APDU parsing, status words as typed errors, the T=0 GET
// RESPONSE / wrong-Le dance, and identity discovery (ICCID, EID, IMSI).
//
// Data flow: agent/ holds one Card per present card and feeds it the
// command APDUs the server relays; the backends (ccid/, pcsc/, card/sim)
// turn them into reader traffic.
package card

import (
	"context"
	"errors"
)

// Card is a powered, connected smart card in one reader slot.
//
// Implementations serialise calls themselves or document that they do not;
// the agent calls a Card from a single goroutine. Every method that talks
// to the card honours ctx: when it is done the call returns ctx.Err()
// (wrapped) as soon as the backend allows.
type Card interface {
	// ATR returns the answer-to-reset of the current power cycle.
	ATR() []byte
	// Transmit sends one command APDU and returns the raw response APDU:
	// response data followed by SW1 SW2. It does no GET RESPONSE handling
	// beyond what the transport protocol itself requires; see
	// TransmitFollow for the T=0 dance.
	Transmit(ctx context.Context, command []byte) ([]byte, error)
	// Reset resets the card and returns its new ATR.
	Reset(ctx context.Context, kind ResetKind) ([]byte, error)
	// Close releases the card (powering it off where the backend owns
	// power). Close is safe to call more than once.
	Close() error
}

// Transmitter is the part of a Card that identity discovery and the APDU
// helpers need. The server implements it over a WebSocket.
type Transmitter interface {
	Transmit(ctx context.Context, command []byte) ([]byte, error)
}

// ResetKind chooses between a warm and a cold reset.
type ResetKind int

const (
	// WarmReset asserts RST with power kept on (PC/SC SCARD_RESET_CARD).
	WarmReset ResetKind = iota
	// ColdReset powers the card off and on again (SCARD_UNPOWER_CARD).
	ColdReset
)

func (k ResetKind) String() string {
	if k == ColdReset {
		return "cold"
	}
	return "warm"
}

// Errors that backends wrap so callers can tell what happened with
// errors.Is, whatever the backend.
var (
	// ErrRemoved: the card was removed (or the reader went away) while
	// in use; the Card is dead and must be closed.
	ErrRemoved = errors.New("card removed")
	// ErrNoCard: no card is present in the slot.
	ErrNoCard = errors.New("no card present")
	// ErrMute: the card did not answer in time.
	ErrMute = errors.New("card mute")
	// ErrClosed: the Card was used after Close.
	ErrClosed = errors.New("card closed")
	// ErrReset: another application sharing the card reset it (PC/SC
	// shared mode). The call that reports it did not reach the card. The
	// card's state — selected files, verified PINs, logical channels — is
	// lost, but the Card is still usable: the next Transmit goes to the
	// freshly reset card.
	ErrReset = errors.New("card reset by another application")
)
