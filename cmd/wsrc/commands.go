package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

var listCmd = &command{
	name:    "list",
	summary: "list the cards on the server",
	json:    true,
	usage: `Usage:
  wsrc list [--server URL] [--json] [--agent NAME] [--reader NAME]
            [--iccid ICCID | --eid EID | --atr ATR | --id TYPE=VALUE] [--limit N]

Lists the cards the server knows (those you may use), with their
identities, their state (init: being identified; ready: free; associated:
selected by a user), the agent and reader they sit in (when the server
tells), and the agent's address (when the server shows it).

The filter flags list only the matching cards: on a server with
thousands of cards the server sends just those (wsrc-server's extension
of list_cards; a server without it, such as pySim's, sends every card and
wsrc filters them). With --limit, at most N cards are shown and a last
line (stderr with --json) says how many matched in all.

An IMSI column appears when the server found an IMSI on any card
(wsrc-server reads it where the card gives it without a PIN); select such a
card with --id imsi=IMSI.

Examples:
  wsrc list
  wsrc list --server ws://relay.example.org:4220/
  wsrc list --agent lab-pi-3
  wsrc list --iccid 8949440000001155314
  WSRC_SERVER=ws://pi.local:4220/ wsrc list --json | jq -r '.[].iccid'
`,
	flags: func(fs *flag.FlagSet, o *options) {
		fs.StringVar(&o.agent, "agent", "", "list only the cards of the agent `NAME`")
		fs.StringVar(&o.reader, "reader", "", "list only the cards in the reader `NAME` (as listed)")
		fs.StringVar(&o.iccid, "iccid", "", "list only the card with this `ICCID`")
		fs.StringVar(&o.eid, "eid", "", "list only the card with this `EID`")
		fs.StringVar(&o.atr, "atr", "", "list only the cards with this `ATR` (hex)")
		fs.StringVar(&o.id, "id", "", "list only the cards with this identity, as `TYPE=VALUE`")
		fs.IntVar(&o.limit, "limit", 0, "show at most `N` cards (0: all)")
	},
	run: runList,
}

func runList(cl *cli, ctx context.Context, o *options, args []string) error {
	if len(args) > 0 {
		return usagef("list", "no arguments expected, got %q", args[0])
	}
	if o.identityFlags() > 1 {
		return usagef("list", "filter by at most one of --iccid, --eid, --atr, --id")
	}
	if o.limit < 0 {
		return usagef("list", "--limit wants a number of cards, 0 for all")
	}
	idType, idStr, err := o.identity("list")
	if err != nil {
		return err
	}
	c, err := cl.dial(ctx, o)
	if err != nil {
		return err
	}
	defer c.Close()
	q := protocol.ListCards{Agent: o.agent, Reader: o.reader, IDType: idType, IDStr: idStr, Limit: o.limit}
	cards, total, err := c.ListCardsWhere(ctx, q)
	if err != nil {
		return err
	}
	more := ""
	if total > len(cards) {
		more = fmt.Sprintf("%d of %d matching cards shown (--limit)", len(cards), total)
	}
	if o.json {
		if more != "" {
			fmt.Fprintln(cl.stderr, more)
		}
		return writeJSON(cl.stdout, listJSON(cards))
	}
	if err := writeTable(cl.stdout, cards); err != nil || more == "" {
		return err
	}
	_, err = fmt.Fprintln(cl.stdout, more)
	return err
}

// cardJSON is one card in `wsrc list --json`.
type cardJSON struct {
	ICCID      string              `json:"iccid,omitempty"`
	EID        string              `json:"eid,omitempty"`
	IMSI       string              `json:"imsi,omitempty"`
	ATR        string              `json:"atr,omitempty"`
	State      string              `json:"state"`
	Agent      string              `json:"agent,omitempty"`
	Reader     string              `json:"reader,omitempty"`
	Address    string              `json:"address,omitempty"`
	Identities protocol.Identities `json:"identities"`
}

func listJSON(cards []protocol.CardInfo) []cardJSON {
	out := make([]cardJSON, 0, len(cards))
	for _, c := range cards {
		ids := c.Identities
		if ids == nil {
			ids = protocol.Identities{}
		}
		out = append(out, cardJSON{
			ICCID: ids[protocol.IdentityICCID], EID: ids[protocol.IdentityEID], IMSI: ids[protocol.IdentityIMSI], ATR: ids[protocol.IdentityATR],
			State: c.State, Agent: c.Agent, Reader: c.Reader, Address: address(c.RemoteAddr), Identities: ids,
		})
	}
	return out
}

// address formats a card agent's address; "" when there is none or the
// server hides it (wsrc-server sends ["0.0.0.0", 0] unless started with
// --show-remote-addr).
func address(a protocol.RemoteAddr) string {
	if (a.IP == "" || a.IP == "0.0.0.0") && a.Port == 0 {
		return ""
	}
	return net.JoinHostPort(a.IP, strconv.Itoa(a.Port))
}

func writeTable(w io.Writer, cards []protocol.CardInfo) error {
	if len(cards) == 0 {
		_, err := fmt.Fprintln(w, "no cards")
		return err
	}
	// The IMSI column only when there is an IMSI to show (pySim's server
	// never reads one).
	imsi := slices.ContainsFunc(cards, func(c protocol.CardInfo) bool { return c.Identities[protocol.IdentityIMSI] != "" })
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if imsi {
		fmt.Fprintln(tw, "ICCID\tEID\tIMSI\tSTATE\tATR\tAGENT/READER\tADDRESS")
	} else {
		fmt.Fprintln(tw, "ICCID\tEID\tSTATE\tATR\tAGENT/READER\tADDRESS")
	}
	for _, c := range cards {
		where := c.Agent
		switch {
		case c.Agent != "" && c.Reader != "":
			where = c.Agent + "/" + c.Reader
		case c.Reader != "":
			where = c.Reader
		}
		cells := []string{c.Identities[protocol.IdentityICCID], c.Identities[protocol.IdentityEID]}
		if imsi {
			cells = append(cells, c.Identities[protocol.IdentityIMSI])
		}
		cells = append(cells, c.State, c.Identities[protocol.IdentityATR], where, address(c.RemoteAddr))
		for i, s := range cells {
			sep := "\t"
			if i == len(cells)-1 {
				sep = "\n"
			}
			fmt.Fprint(tw, dash(sanitize(s)), sep)
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sanitize keeps text from the server from breaking the table or the
// terminal: control characters (tabs too) become '?'.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var apduCmd = &command{
	name:    "apdu",
	summary: "send command APDUs to a card",
	json:    true,
	selects: true,
	usage: `Usage:
  wsrc apdu (--iccid ICCID | --eid EID | --atr ATR | --id TYPE=VALUE) [--json] APDU...

Selects the card, sends each APDU in turn and prints the response data and
the status word with its meaning:

  > 00a40004023f00
  < 62208202782183023f00...010a 9000 (normal processing)

Each APDU is one argument in hex; spaces and colons may separate bytes
(quote the argument then). The APDUs go to the card as they are, and the
card agent completes each response before it answers: a 61xx (more data)
is followed by GET RESPONSE and a 6Cxx (wrong Le) by the command with the
right Le, so what is printed is the whole response and its final status
(wsrc-agent and pySim's card client both do this). All APDUs are checked before the
first is sent. A status word other than 9000 is not an error: the exit
status only tells whether the APDUs were exchanged.

Examples:
  wsrc apdu --iccid 8949440000001155314 00a40004023f00
  wsrc apdu --eid 89049032123451234512345678901235 "00 a4 00 04 02 2f e2" 00b000000a
  wsrc apdu --id imsi=262011234567890 --json 00:a4:00:04:02:3f:00
`,
	run: runAPDU,
}

// apduJSON is one exchange in `wsrc apdu --json`.
type apduJSON struct {
	Command  string `json:"command"`
	Response string `json:"response"`
	SW       string `json:"sw"`
	Meaning  string `json:"meaning"`
}

func runAPDU(cl *cli, ctx context.Context, o *options, args []string) error {
	if len(args) == 0 {
		return usagef("apdu", "no APDU given")
	}
	apdus := make([][]byte, len(args))
	for i, a := range args {
		b, err := parseAPDU(a)
		if err != nil {
			return usagef("apdu", "APDU %d (%q): %v", i+1, a, err)
		}
		apdus[i] = b
	}
	c, ids, err := cl.selectCard(ctx, "apdu", o)
	if err != nil {
		return err
	}
	defer c.Close()
	doc := struct {
		Identities protocol.Identities `json:"identities"`
		APDUs      []apduJSON          `json:"apdus"`
	}{Identities: ids, APDUs: []apduJSON{}}
	for _, cmd := range apdus {
		if !o.json {
			fmt.Fprintf(cl.stdout, "> %x\n", cmd)
		}
		resp, sw, err := c.Transmit(ctx, cmd)
		if err != nil {
			if o.json {
				_ = writeJSON(cl.stdout, doc)
			}
			return err
		}
		if o.json {
			doc.APDUs = append(doc.APDUs, apduJSON{
				Command: hex.EncodeToString(cmd), Response: hex.EncodeToString(resp),
				SW: fmt.Sprintf("%04x", sw), Meaning: card.SWMeaning(sw),
			})
			continue
		}
		printResponse(cl.stdout, resp, sw)
	}
	if o.json {
		return writeJSON(cl.stdout, doc)
	}
	return nil
}

// printResponse prints "< DATA SW (meaning)".
func printResponse(w io.Writer, resp []byte, sw uint16) {
	if len(resp) > 0 {
		fmt.Fprintf(w, "< %x %04x (%s)\n", resp, sw, card.SWMeaning(sw))
		return
	}
	fmt.Fprintf(w, "< %04x (%s)\n", sw, card.SWMeaning(sw))
}

var resetCmd = &command{
	name:    "reset",
	summary: "reset a card and print its new ATR",
	json:    true,
	selects: true,
	usage: `Usage:
  wsrc reset (--iccid ICCID | --eid EID | --atr ATR | --id TYPE=VALUE) [--json]

Selects the card, resets it and prints the ATR it answered with. A
pySim server does not pass the ATR on; then that is said instead (and
"atr" is null in JSON).

Examples:
  wsrc reset --iccid 8949440000001155314
  wsrc reset --atr 3b9f96801fc78031e073fe211b575352435653494da3 --json
`,
	run: runReset,
}

func runReset(cl *cli, ctx context.Context, o *options, args []string) error {
	if len(args) > 0 {
		return usagef("reset", "no arguments expected, got %q", args[0])
	}
	c, ids, err := cl.selectCard(ctx, "reset", o)
	if err != nil {
		return err
	}
	defer c.Close()
	atr, err := c.Reset(ctx)
	if err != nil {
		return err
	}
	if o.json {
		var a *string
		if atr != nil {
			s := hex.EncodeToString(atr)
			a = &s
		}
		return writeJSON(cl.stdout, struct {
			Identities protocol.Identities `json:"identities"`
			ATR        *string             `json:"atr"`
		}{ids, a})
	}
	printATR(cl.stdout, atr)
	return nil
}

func printATR(w io.Writer, atr []byte) {
	if atr == nil {
		fmt.Fprintln(w, "reset done (the server does not report the new ATR)")
		return
	}
	fmt.Fprintf(w, "ATR %x\n", atr)
}
