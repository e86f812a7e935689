package agent

import (
	"context"
	"fmt"

	"github.com/wsrc-go/wsrc/card"
)

// A Backend is a source of cards: the simulated cards, PC/SC, CCID over
// USB. The Manager runs each backend and makes one Session per card it
// reports.
type Backend interface {
	// Name is the backend's short name ("sim", "pcsc", "ccid"), used in
	// SlotIDs, logs and `wsrc-agent readers`.
	Name() string
	// Probe describes the backend and its readers once, for `wsrc-agent
	// readers`: loaded, skipped with a reason (e.g. "pcscd not running"),
	// or failed, down to each reader and slot. Present slots carry an Open
	// function; Describe opens them to show the ATR and identities.
	Probe(ctx context.Context) BackendReport
	// Run watches the readers and sends a SlotEvent for every change
	// until ctx is done: Present (with Open) for each card found,
	// including those present when Run starts; not Present when a card is
	// removed or its reader disappears. A card swapped faster than the
	// backend can see may be reported as Present twice in a row; the
	// Manager treats that as removal and insertion. Sends must watch
	// ctx.Done(). Run returns nil when ctx is done, or an error saying why
	// it cannot go on; the Manager then stops the sessions of its slots.
	Run(ctx context.Context, events chan<- SlotEvent) error
}

// SlotID names one card slot: the backend, the reader (as the backend
// names it) and the slot's index in that reader (0 for single-slot
// readers).
type SlotID struct {
	Backend string
	Reader  string
	Index   int
}

// String returns "backend:reader" or "backend:reader/slot N".
func (id SlotID) String() string {
	return id.Backend + ":" + id.ReaderName()
}

// ReaderName is the name sent in hello's reader field: the reader name,
// followed by " slot N" for slots other than the first.
func (id SlotID) ReaderName() string {
	if id.Index == 0 {
		return id.Reader
	}
	return fmt.Sprintf("%s slot %d", id.Reader, id.Index)
}

// SlotEvent reports a change in one slot.
type SlotEvent struct {
	Slot SlotID
	// Present tells whether a card is now in the slot.
	Present bool
	// Open powers up and connects the card that is present (set when
	// Present is true). The Manager calls it from the goroutine that will
	// own the Card, and closes the Card when the session ends. Open must
	// honour ctx.
	Open func(ctx context.Context) (card.Card, error)
}

// Status is the outcome of probing a backend or a reader, tri-state as in
// periph.io's driver registry.
type Status int

const (
	// StatusLoaded: usable.
	StatusLoaded Status = iota
	// StatusSkipped: deliberately not used here; Reason says why (e.g.
	// "no PC/SC service", "interface claimed by pcscd").
	StatusSkipped
	// StatusFailed: should have worked but did not; Reason is the error.
	StatusFailed
)

func (s Status) String() string {
	switch s {
	case StatusLoaded:
		return "loaded"
	case StatusSkipped:
		return "skipped"
	case StatusFailed:
		return "failed"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// BackendReport describes one backend for `wsrc-agent readers`.
type BackendReport struct {
	Backend string
	Status  Status
	Reason  string // for StatusSkipped and StatusFailed
	Readers []ReaderReport
}

// ReaderReport describes one reader.
type ReaderReport struct {
	Name    string
	Status  Status
	Reason  string // for StatusSkipped and StatusFailed
	Slots   []SlotReport
	Details string // optional, e.g. "USB 076b:3021, CCID T=0/T=1"
}

// SlotReport describes one slot and the card in it.
type SlotReport struct {
	Index   int
	Present bool
	// Open is set by the backend for a present card; Describe uses it to
	// fill ATR, Identities and Err.
	Open func(ctx context.Context) (card.Card, error)

	ATR []byte
	// Identities holds what Describe could read: ICCID, EID (keys as in
	// protocol.Identities).
	Identities map[string]string
	// Err says why the card could not be opened or read ("" if it was).
	Err string
}
