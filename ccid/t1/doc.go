// Package t1 implements the ISO/IEC 7816-3 T=1 block transmission protocol,
// both ends of it, in pure Go.
//
// # Place in the data flow
//
// A TPDU-level CCID reader moves single T=1 blocks between host and card;
// the host has to run the block protocol itself (libccid does this in
// src/openct/proto-t1.c). The ccid backend wraps its PC_to_RDR_XfrBlock
// round trip in an [Exchanger] and hands it to [New]; the resulting [Conn]
// turns each command APDU into I-blocks and reassembles the card's answer:
//
//	card.Card.Transmit → ccid → t1.Conn.Transmit → Exchanger (XfrBlock) → reader → card
//
// The simulated T=1 TPDU readers sit at the far end of the same path: a
// [CardSide] receives each block the host sends, reassembles the command,
// asks the simulated card for the response and chains it back. It can be
// told to misbehave (bad EDC, lost blocks, wrong sequence numbers, WTX, IFS
// and ABORT requests) so that the host side's error handling can be tested
// against it.
//
// # Blocks
//
// A block is NAD PCB LEN INF EDC. LEN is 0..254 (0xFF is reserved), the EDC
// is one LRC byte (XOR of all bytes) or, when the ATR's first TC for T=1
// says so, two CRC bytes computed the way libccid does (see [CRC]). The PCB
// tells three kinds apart:
//
//	I-block  0 N(S) M 00000          information; M = more blocks follow
//	R-block  1 0 0 N(R) 00ee         receive ready; ee = 01 EDC/parity error, 10 other error
//	S-block  1 1 r ttttt             supervisory; r = response, t = RESYNCH 0, IFS 1, ABORT 2, WTX 3
//
// # What the host side does (ISO/IEC 7816-3 §11.6)
//
//   - The host sends first, an I-block with N(S) = 0 or an S-block. Each
//     side numbers its own I-blocks modulo 2.
//   - A command longer than IFSC is chained: I-blocks with M = 1, each
//     acknowledged by an R-block whose N(R) is the N(S) the card expects
//     next. The card chains long answers the same way and the host
//     acknowledges them.
//   - S(WTX request) is answered with S(WTX response) carrying the same
//     byte, and that byte goes to the reader as the BWT multiplier of the
//     exchange that carries the response (CCID bBWI).
//   - S(IFS request) from the card is answered and its value becomes IFSC;
//     [Conn.NegotiateIFSD] sends the host's own S(IFS request).
//   - A block that is invalid (bad EDC or parity, bad length, LEN 0xFF or
//     above IFSD, reserved PCB bits, an unexpected N(S), a block out of
//     turn) or missing (the reader saw no answer within BWT) is answered
//     with an R-block carrying the error and the N(S) expected next; if
//     the last block sent was already an R-block it is sent again. An
//     R-block from the card naming the block in flight makes the host send
//     that block again.
//   - After MaxRetries such errors in a row the host sends S(RESYNCH
//     request) (up to three times), resets both sequence numbers and IFSC,
//     and reports the failure: a command is never silently sent twice,
//     because the card may already have executed it.
//   - S(ABORT request) from the card is answered with S(ABORT response)
//     and Transmit returns [ErrAborted]; the next call resynchronises
//     first.
//
// Errors carry context and match [ErrProtocol], [ErrAborted] or
// [ErrResyncFailed] with errors.Is; a single bad block is described by a
// [*BlockError].
package t1
