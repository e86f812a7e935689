// Package trace records the APDUs wsrc-server relays: to pcap files that
// Wireshark and tshark decode as "GSM SIM", and to a log/slog logger, one
// record per APDU. Secrets (PINs, keys, authentication data) are redacted
// unless redaction is explicitly turned off.
//
// # Place in the data flow
//
// The server's relay calls (*Tracer).APDU once per answered c_apdu, with
// the command, the response data, the status word and the round-trip
// time, and (*Tracer).Reset per reset. Both copy the event into a bounded
// queue and return at once; a full queue drops the event and counts it
// (Stats.Dropped), so a slow disk never holds up a card. One goroutine,
// owned by the Tracer and ended by Close, applies the redaction policy and
// writes the sinks. A nil *Tracer traces nothing at no cost.
//
// # Pcap format
//
// Classic pcap (pcap-savefile(5)) with nanosecond timestamps and
// LINKTYPE_RAW: every packet is IPv4, UDP to port 4729, a GSMTAP header
// (version 2, hdr_len 4 words, type GSMTAP_TYPE_SIM = 0x04, sub_type
// GSMTAP_SIM_APDU = 0x00, libosmocore's gsmtap.h) and the payload that
// SIMtrace and osmo-remsim emit and Wireshark's gsm_sim dissector reads:
// CLA INS P1 P2 P3 [command data] [response data] SW1 SW2 (see
// AppendSIMAPDU for how ISO/IEC 7816-4 case 1 and case 4 commands are put
// in that T=0 form). In the global file (Options.File) each card has its
// own source address, 127.1.0.1 onwards; the assignment is logged. Per-card
// files (Options.Dir) are named eid-<EID>.pcap, iccid-<ICCID>.pcap or
// card-<card ID>.pcap, whichever identity the event has first in that
// order; APDUs sent before the server knew the card's identity (the
// server's own identification) land in the card-<ID> file. Files are
// mode 0600; a file left by an earlier run is rotated to name.1 rather
// than appended to, and Options.MaxFileBytes rotates by size.
//
// # Redaction
//
// Redaction is on unless Options.Unredacted is set. Redacted bytes are
// overwritten with 0xFF, keeping their number, so length fields stay true
// and Wireshark still decodes the header; CLA INS P1 P2, the Lc/Le bytes
// and the status word are never changed. The log record of a redacted
// exchange says redacted=cmd, rsp or cmd+rsp. Redacted are:
//
//   - the command data of VERIFY (20, 21), CHANGE REFERENCE DATA (24),
//     DISABLE and ENABLE VERIFICATION REQUIREMENT (26, 28) and RESET
//     RETRY COUNTER / UNBLOCK PIN (2C): PINs and PUKs, under any class;
//   - the command data and the response data of AUTHENTICATE / RUN GSM
//     ALGORITHM / INTERNAL AUTHENTICATE (88, 89) and GENERAL AUTHENTICATE
//     (86, 87): RAND and AUTN, and RES, CK, IK, Kc, AUTS (3GPP TS 31.102
//     7.1.2, GSM 11.11 9.2.16) — the keys protect the user's traffic, and
//     challenge plus response allow offline attacks on weak algorithms;
//   - the response data of a GET RESPONSE (C0) that fetches the rest of a
//     redacted response on the same logical channel (T=0 61xx, GSM 9Fxx);
//   - the command data of EXTERNAL AUTHENTICATE (82) and the response
//     data of GlobalPlatform INITIALIZE UPDATE (50, proprietary class):
//     secure channel cryptograms, which allow an offline search for the
//     card's static keys;
//   - the command data of GlobalPlatform PUT KEY (D8, proprietary class):
//     key values;
//   - the command data of STORE DATA (E2, proprietary class): GP
//     personalisation data and eUICC (SGP.22) ES10 requests, except
//     complete single-block ES10 requests from an allow-list of ones that
//     carry no secrets (GetEuiccInfo1/2, GetEuiccData (EID),
//     GetEuiccChallenge, ProfileInfoList, Enable/Disable/DeleteProfile,
//     SetNickname, notifications, configured addresses, EuiccMemoryReset,
//     CancelSession, GetRAT). Redacted among the rest: BoundProfilePackage
//     (session keys, profile), PrepareDownload (hashed confirmation code),
//     AuthenticateServer (the activation code's matching ID);
//   - the response data of READ BINARY / READ RECORD and the command data
//     of UPDATE BINARY / UPDATE RECORD (B0-B3, D6, D7, DC, DD) on files
//     that hold session keys or NAS security contexts: EF.Keys (6F08),
//     EF.KeysPS (6F09), EF.EPSNSC (6FE4), EF.Kc (6F20, 4F20), EF.KcGPRS
//     (6F52, 4F52), EF.5GS3GPPNSC (4F03), EF.5GSN3GPPNSC (4F04) and
//     EF.5GAUTHKEYS (4F05), by FID or by their short file identifiers
//     (08, 09, 18 in an ADF; 03-05 in DF.5GS; 01, 02 in DF.GSM-ACCESS).
//
// The last two rules need the current file, which the tracer follows per
// card ID and logical channel from SELECT (by FID, path or AID), short
// file identifiers, MANAGE CHANNEL and resets. Wherever it does not know
// the current file — a card's first events, after a SELECT it cannot
// follow (parent DF, unknown P1), after dropped events, after a command
// that got no answer (traced with SW 0000) — it assumes the
// worst: reads and updates of the current EF and GET RESPONSE are then
// redacted until a SELECT makes the state known again.
//
// Not redacted, by design or for lack of a stateless rule: the SW (retry
// counters such as 63C2 are what one debugs), SELECT and the FCP, the
// ICCID, IMSI and other identities, SMS and phone book contents, ENVELOPE
// (OTA packets are protected by their own keys), GET CHALLENGE, and keys
// written by card-specific personalisation commands or proprietary files
// (for example a programmable SIM's Ki/OPc file) — trace such sessions
// with care, or not at all. Redaction off (Unredacted) writes everything
// as relayed; use it only with test cards.
package trace
