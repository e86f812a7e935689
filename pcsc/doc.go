// Package pcsc is the PC/SC backend: cards in readers managed by pcscd,
// reached through libpcsclite (github.com/ebfe/scard, cgo).
//
// Data flow: the agent's reader manager runs Watch to learn which readers
// exist and when cards come and go, and calls Open for each present card;
// the resulting *Card implements card.Card, so the agent relays APDUs to
// it exactly as to a CCID or simulated card.
//
//	pcscd ──(libpcsclite)── seam ── Watch ──ReaderEvent──► agent
//	                           └──── Open ──card.Card────► agent session
//
// All PC/SC calls go through a small unexported seam (system, scardContext,
// scardCard in seam.go); the logic above it (error mapping, reader
// filtering, the watcher's state machine, reset and removal handling) is
// tested with an in-process fake. The adapter over ebfe/scard (adapter.go)
// is the only part that needs a real pcscd; the real-stack tests run one
// privately (internal/testenv/pcscdtest) with vpcd readers and virtual cards
// (internal/vpcd).
//
// Errors: every PC/SC failure is an *Error carrying the call, the reader
// and the Code, whose String is the PC/SC name (SCARD_W_REMOVED_CARD...).
// errors.Is matches the Code itself and the meaning behind it:
// card.ErrRemoved (card pulled or reader gone mid-session), card.ErrNoCard,
// card.ErrMute, ErrServiceUnavailable (pcscd stopped or not running),
// ErrReaderUnavailable.
//
// pcscd restarts: handles do not survive them. Watch re-establishes its
// context with backoff and reports readers Gone and back; an open Card
// fails with card.ErrRemoved and ErrServiceUnavailable and must be
// reopened, which the agent does when Watch reports the card present again.
//
// Removal during an APDU: a transmit that fails vaguely (a driver error,
// an empty response) asks pcscd with SCardStatus on the card's own handle
// whether the card is gone, for up to 1.5 s while pcscd's presence poll
// catches up. It never uses SCardGetStatusChange, which ebfe/scard needs
// serialised process-wide and which Watch holds while it waits, so the
// error reaches the user as soon as pcscd has seen the removal.
//
// Sharing: Open connects exclusively by default, so no other PC/SC client
// (pcsc_scan, a browser, gpg's scdaemon) can interleave APDUs with the
// relayed session; OpenOptions.Shared opts out. A shared card that another
// client resets fails the next Transmit with card.ErrReset (the command is
// not sent, the card's state is lost); Transmit has acknowledged the reset
// to pcscd, so the Card keeps working with the freshly reset card.
package pcsc
