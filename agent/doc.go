// Package agent is the card side of WSRC: it puts every smart card present
// in the local readers on a WSRC server, one WebSocket per card.
//
// Data flow:
//
//	Backend (sim, pcsc, ccid) ──SlotEvent──► Manager ──one per present card──► Session ──WebSocket──► server card port
//	                                                                            │
//	                                                                            └─ card.Card (TransmitFollow, Reset)
//
// A [Backend] watches its readers and reports, for each slot, whether a card
// is present and how to open it. The [Manager] turns those events into
// sessions: a [Session] per present card, stopped when the card is removed
// or its reader disappears, a fresh one when a card is inserted. A Session
// speaks the card half of the WSRC protocol (package protocol) the way
// pySim's contrib/wsrc_card_client.py does: hello with the ATR, then it
// executes every c_apdu on the card (complete response, T=0 GET RESPONSE
// and 6Cxx handled here, see card.TransmitFollow) and answers reset_req with
// a warm reset. Unlike pySim's client it reconnects when the server goes
// away, answers malformed or unknown messages with an error message instead
// of dying, and closes its WebSocket cleanly on shutdown.
//
// Connection security: wss:// URLs are verified as [TLSOptions] say
// (system roots, a CA file, pinned certificate fingerprints) and may
// present a client certificate; [Config].Token goes in every upgrade
// request as "Authorization: Bearer <token>" and is never logged. A
// refusal (401, 429) is logged plainly and retried with the usual backoff.
// Keepalive: each connection pings every Timing.PingPeriod, and a server
// silent for Timing.PongWait (default two ping periods) is taken for dead.
// [Manager].State and [Manager].Ping let the program report status and
// run a watchdog (cmd/wsrc-agent does both for systemd).
//
// Backends are described for `wsrc-agent readers` by Backend.Probe: each reader
// is loaded, skipped (with a reason) or failed, as in periph.io's driver
// registry, so "CCID first, PC/SC as fallback" can say why a reader went to
// one backend or the other.
//
// The agent sees cards only through card.Card: adding a backend never
// touches the session code.
package agent
