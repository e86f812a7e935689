// Package pcscchain holds only tests: end-to-end tests of the whole WSRC
// chain over the real PC/SC stack, with virtual cards instead of hardware:
//
//	client (user) ──ws──► server ◄──ws── agent.Manager + pcsc backend
//	                                         │ libpcsclite
//	                                         ▼
//	                     private pcscd (internal/testenv/pcscdtest) ── vpcd driver
//	                                         │ TCP 127.0.0.1
//	                                         ▼
//	                     internal/vpcd ── card/sim (T=0, T=0 with GET
//	                                       RESPONSE, T=1)
//
// Everything but pcscd runs in the test process: the server on loopback
// listeners (httptest), the agent's Manager with the pcsc backend, the
// virtual cards, and the user through package client. Each test gets its
// own pcscd (two vpcd readers), server and agent.
//
// Scenarios: identification (ICCID and EID in list_cards), APDU relay with
// extended-length commands and responses on T=0, T=1 and T=0 with GET
// RESPONSE, the agent's GET RESPONSE and 6Cxx handling as the card sees
// it, reset with a new ATR, card removal while a user holds the card and
// while the user's APDU is at the card (the error arrives without waiting
// for the agent's reader watcher),
// re-insertion, two readers at once, and pcscd stopped and restarted.
//
// Synchronisation: inserting and removing a card are the vpcd connection's
// start and end (vpcd.Slot waits for both), pcscd's stop and start are
// waited for by internal/testenv/pcscdtest, and everything the user does is a
// request with a reply. "A card was identified" and "a card left" are
// awaited through the server's Observer: chain.waitCards looks at the
// Cards snapshot (the list a user's list_cards gets) again at every
// CardChanged event, bounded by 30 s; every test then checks the state it
// waited for. There are no sleeps and no polling.
//
// Logs of server and agent (and pcscd's) are printed when a test fails, or
// always with WSRC_TEST_LOG=1.
//
// Requirements are those of internal/testenv/pcscdtest (pcscd, vsmartcard-vpcd,
// util-linux, namespaces): without them the tests skip, except under
// CI=true, where they fail. They also skip in -short mode.
package pcscchain
