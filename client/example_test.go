package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strings"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/client/clienttest"
	"github.com/wsrc-go/wsrc/protocol"
)

// A whole session: list the cards, select one by ICCID, read EF.ICCID,
// reset the card. The server here is an in-process fake holding the card
// of shared/protocol/transcript.md; against a real server, dial its user
// port, e.g. ws://relay.example.org:4220/.
func Example() {
	srv := clienttest.Start(clienttest.Config{Cards: []*clienttest.Card{clienttest.TranscriptCard()}})
	defer srv.Close()

	ctx := context.Background()
	c, err := client.Dial(ctx, srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	cards, err := c.ListCards(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, card := range cards {
		fmt.Println("card", card.Identities[protocol.IdentityICCID], card.State)
	}

	ids, err := c.Select(ctx, "iccid", "8949440000001155314")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("selected EID", ids[protocol.IdentityEID])

	for _, apdu := range [][]byte{
		{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00}, // SELECT MF
		{0x00, 0xa4, 0x00, 0x04, 0x02, 0x2f, 0xe2}, // SELECT EF.ICCID
		{0x00, 0xb0, 0x00, 0x00, 0x0a},             // READ BINARY, 10 bytes
	} {
		resp, sw, err := c.Transmit(ctx, apdu)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%x → %x %04x\n", apdu, resp, sw)
	}

	atr, err := c.Reset(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ATR after reset: %x\n", atr)
	// Output:
	// card 8949440000001155314 ready
	// selected EID 89049032123451234512345678901235
	// 00a40004023f00 → 62208202782183023f00a5038001718a01058b032f0601c60990014083010183010a 9000
	// 00a40004022fe2 → 62178202412183022fe28a01058b032f06038002000a880110 9000
	// 00b000000a → 989444000000115513f4 9000
	// ATR after reset: 3b9f96801fc78031e073fe211b575352435653494da3
}

// The server answers a request it cannot carry out with an `error`
// message; the call returns it as a *client.ServerError with the server's
// text, and the connection stays usable.
func ExampleServerError() {
	srv := clienttest.Start(clienttest.Config{Cards: []*clienttest.Card{clienttest.TranscriptCard()}})
	defer srv.Close()

	ctx := context.Background()
	c, err := client.Dial(ctx, srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Select(ctx, "eid", "89000000000000000000000000000000")
	var se *client.ServerError
	if errors.As(err, &se) {
		fmt.Println("server said:", se.Message)
	}
	fmt.Println(err)

	// Still connected: select the card that is there.
	ids, err := c.Select(ctx, "EID", clienttest.TranscriptEID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("selected ICCID", ids[protocol.IdentityICCID])
	// Output:
	// server said: no card with eid == 89000000000000000000000000000000
	// selecting card eid=89000000000000000000000000000000: server: no card with eid == 89000000000000000000000000000000
	// selected ICCID 8949440000001155314
}

// pySim's server does not tell users the ATR after a reset; Reset then
// returns a nil ATR.
func ExampleClient_Reset() {
	srv := clienttest.Start(clienttest.Config{
		Cards:      []*clienttest.Card{clienttest.TranscriptCard()},
		PySimReset: true,
	})
	defer srv.Close()

	ctx := context.Background()
	c, err := client.Dial(ctx, srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select(ctx, "atr", clienttest.TranscriptATR); err != nil {
		log.Fatal(err)
	}
	atr, err := c.Reset(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if atr == nil {
		fmt.Println("reset done; the server did not report the ATR")
	}
	// Output:
	// reset done; the server did not report the ATR
}

// User name and password in the URL travel as HTTP basic authentication.
// A server that refuses the upgrade yields a *client.HandshakeError.
func ExampleDial_basicAuth() {
	srv := clienttest.Start(clienttest.Config{
		Authorize: func(r *http.Request) error {
			if user, pass, ok := r.BasicAuth(); !ok || user != "alice" || pass != "secret" {
				return errors.New("who are you?")
			}
			return nil
		},
	})
	defer srv.Close()

	// srv.URL is ws://127.0.0.1:PORT/; put credentials into it.
	hostPort := strings.TrimPrefix(srv.URL, "ws://")
	ctx := context.Background()
	c, err := client.Dial(ctx, "ws://alice:secret@"+hostPort)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("alice is in")
	c.Close()

	_, err = client.Dial(ctx, "ws://mallory:guess@"+hostPort)
	var he *client.HandshakeError
	if errors.As(err, &he) {
		fmt.Println(he.StatusCode, he.Body)
	}
	// Output:
	// alice is in
	// 401 who are you?
}
