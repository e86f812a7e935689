package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/client/clienttest"
	"github.com/wsrc-go/wsrc/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var selectMF = []byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x3f, 0x00}

// startFake starts a clienttest server with the transcript card and dials it.
func startFake(t *testing.T, cfg clienttest.Config, opts ...client.Option) (*clienttest.Server, *client.Client) {
	t.Helper()
	if cfg.Cards == nil {
		cfg.Cards = []*clienttest.Card{clienttest.TranscriptCard()}
	}
	srv := clienttest.Start(cfg)
	t.Cleanup(srv.Close)
	c, err := client.Dial(t.Context(), srv.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func TestSession(t *testing.T) {
	srv, c := startFake(t, clienttest.Config{})
	ctx := t.Context()
	cards, err := c.ListCards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cards) != 1 || cards[0].State != protocol.StateReady ||
		cards[0].Identities[protocol.IdentityEID] != clienttest.TranscriptEID ||
		cards[0].RemoteAddr != (protocol.RemoteAddr{IP: "127.0.0.1", Port: 37586}) {
		t.Fatalf("ListCards = %+v", cards)
	}
	// 19-digit ICCID given with its f pad, as pySim-shell must.
	ids, err := c.Select(ctx, "iccid", clienttest.TranscriptICCID+"f")
	if err != nil {
		t.Fatal(err)
	}
	if ids[protocol.IdentityATR] != clienttest.TranscriptATR {
		t.Errorf("Select identities = %v", ids)
	}
	resp, sw, err := c.Transmit(ctx, selectMF)
	if err != nil || sw != 0x9000 || len(resp) != 34 {
		t.Errorf("Transmit = %x, %04x, %v", resp, sw, err)
	}
	resp, sw, err = c.Transmit(ctx, []byte{0x00, 0xa4, 0x00, 0x04, 0x02, 0x7f, 0x20})
	if err != nil || sw != 0x6a82 || resp == nil || len(resp) != 0 {
		t.Errorf("Transmit unknown file = %#v, %04x, %v", resp, sw, err)
	}
	atr, err := c.Reset(ctx)
	if err != nil || fmt.Sprintf("%x", atr) != clienttest.TranscriptATR {
		t.Errorf("Reset = %x, %v", atr, err)
	}
	// The frames on the wire are pySim's, plus our version in hello.
	want := []string{
		`{"client_type": "user", "version": "dev", "msg_type": "hello"}`,
		`{"msg_type": "list_cards"}`,
		`{"id_type": "iccid", "id_str": "8949440000001155314f", "msg_type": "select_card"}`,
		`{"command": "00a40004023f00", "msg_type": "c_apdu"}`,
		`{"command": "00a40004027f20", "msg_type": "c_apdu"}`,
		`{"msg_type": "reset_req"}`,
	}
	if got := srv.Received(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("server received\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestServerErrorsVerbatim(t *testing.T) {
	srv, c := startFake(t, clienttest.Config{})
	ctx := t.Context()
	wantServerError := func(err error, msg string) {
		t.Helper()
		var se *client.ServerError
		if !errors.As(err, &se) || se.Message != msg {
			t.Fatalf("error %v, want ServerError %q", err, msg)
		}
	}
	_, _, err := c.Transmit(ctx, selectMF)
	wantServerError(err, "no card selected: send select_card first")
	_, err = c.Reset(ctx)
	wantServerError(err, "no card selected: send select_card first")
	_, err = c.Select(ctx, "iccid", "1234")
	wantServerError(err, "no card with iccid == 1234")
	if err.Error() != "selecting card iccid=1234: server: no card with iccid == 1234" {
		t.Errorf("error text %q", err)
	}
	// The connection survives every one of them.
	if _, err := c.Select(ctx, "eid", clienttest.TranscriptEID); err != nil {
		t.Fatal(err)
	}
	// A second user finds the card in use.
	c2, err := client.Dial(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, err = c2.Select(ctx, "eid", clienttest.TranscriptEID)
	wantServerError(err, "card eid == 89049032123451234512345678901235 is in use by another user")
	cards, err := c2.ListCards(ctx)
	if err != nil || cards[0].State != protocol.StateAssociated {
		t.Errorf("ListCards = %+v, %v", cards, err)
	}
}

func TestCardErrorRelayed(t *testing.T) {
	card := clienttest.TranscriptCard()
	card.Transmit = func([]byte) ([]byte, uint16, error) { return nil, 0, errors.New("card disconnected") }
	card.Reset = func() ([]byte, error) { return nil, errors.New("card did not answer reset within 10s") }
	_, c := startFake(t, clienttest.Config{Cards: []*clienttest.Card{card}})
	ctx := t.Context()
	if _, err := c.Select(ctx, "atr", strings.ToUpper(clienttest.TranscriptATR)); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Transmit(ctx, selectMF)
	if err == nil || err.Error() != "transmitting APDU: server: card disconnected" {
		t.Errorf("Transmit error %v", err)
	}
	_, err = c.Reset(ctx)
	if err == nil || err.Error() != "resetting card: server: card did not answer reset within 10s" {
		t.Errorf("Reset error %v", err)
	}
}

func TestResetWithoutATR(t *testing.T) {
	_, c := startFake(t, clienttest.Config{PySimReset: true})
	if _, err := c.Select(t.Context(), "iccid", clienttest.TranscriptICCID); err != nil {
		t.Fatal(err)
	}
	atr, err := c.Reset(t.Context())
	if err != nil || atr != nil {
		t.Errorf("Reset = %x, %v; want nil ATR", atr, err)
	}
}

func TestLocalChecks(t *testing.T) {
	_, c := startFake(t, clienttest.Config{})
	ctx := t.Context()
	for _, cmd := range [][]byte{nil, {0, 0xa4, 0}, make([]byte, client.MaxCommandLen+1)} {
		if _, _, err := c.Transmit(ctx, cmd); err == nil || !strings.Contains(err.Error(), "4 to 65544 bytes") {
			t.Errorf("Transmit(%d bytes) error %v", len(cmd), err)
		}
	}
	if _, err := c.Select(ctx, "", "x"); err == nil {
		t.Error("Select with empty type succeeded")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.ListCards(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("ListCards(cancelled ctx) error %v", err)
	}
	// Nothing was sent, so the connection is still good.
	if _, err := c.ListCards(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	_, c := startFake(t, clienttest.Config{})
	ctx := t.Context()
	if _, err := c.Select(ctx, "iccid", clienttest.TranscriptICCID); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]byte{selectMF, {0x00, 0xa4, 0x00, 0x04, 0x02, 0x2f, 0xe2}} {
		if _, sw, err := c.Transmit(ctx, cmd); err != nil || sw != 0x9000 {
			t.Fatalf("Transmit(%x) = %04x, %v", cmd, sw, err)
		}
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 20 {
				var err error
				if i%2 == 0 {
					var resp []byte
					resp, _, err = c.Transmit(ctx, []byte{0x00, 0xb0, 0x00, 0x00, 0x0a})
					if err == nil && fmt.Sprintf("%x", resp) != "989444000000115513f4" {
						err = fmt.Errorf("wrong response %x", resp)
					}
				} else {
					var cards []protocol.CardInfo
					cards, err = c.ListCards(ctx)
					if err == nil && len(cards) != 1 {
						err = fmt.Errorf("wrong list %v", cards)
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// scripted serves one WebSocket connection with script, which plays the
// server's part. It returns the URL to dial. Cleanup waits for the script
// to return.
func scripted(t *testing.T, script func(conn *websocket.Conn)) string {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*websocket.Conn
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		mu.Lock()
		conns = append(conns, conn)
		wg.Add(1)
		mu.Unlock()
		defer wg.Done()
		defer conn.Close()
		script(conn)
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}

// expect reads one frame and checks its msg_type.
func expect(t *testing.T, conn *websocket.Conn, msgType string) protocol.Message {
	t.Helper()
	_, data, err := conn.ReadMessage()
	if err != nil {
		t.Errorf("server: reading %s: %v", msgType, err)
		return nil
	}
	m, err := protocol.Decode(data)
	if err != nil || m.MsgType() != msgType {
		t.Errorf("server: got %s (%v), want %s", data, err, msgType)
	}
	return m
}

func sendRaw(conn *websocket.Conn, frame string) {
	_ = conn.WriteMessage(websocket.TextMessage, []byte(frame))
}

// greet plays the server's side of hello.
func greet(t *testing.T, conn *websocket.Conn) {
	expect(t, conn, protocol.TypeHello)
	sendRaw(conn, `{"msg_type": "hello_ack"}`)
}

// closeCode reads until the connection ends and returns the close code the
// client sent (0 if none).
func closeCode(conn *websocket.Conn) int {
	for {
		_, _, err := conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
				return ce.Code
			}
			return 0
		}
	}
}

func TestServerClosesMidRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hangUp   func(conn *websocket.Conn)
		wantCode int
		wantText string
	}{
		{"close frame", func(conn *websocket.Conn) {
			msg := websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "card agent gone")
			_ = conn.WriteMessage(websocket.CloseMessage, msg)
		}, 1011, "connection closed by the server (1011 internal error): card agent gone"},
		{"tcp drop", func(conn *websocket.Conn) {
			_ = conn.NetConn().Close()
		}, 0, "connection lost: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := scripted(t, func(conn *websocket.Conn) {
				greet(t, conn)
				expect(t, conn, protocol.TypeCAPDU)
				tc.hangUp(conn)
				closeCode(conn)
			})
			c, err := client.Dial(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _, err = c.Transmit(t.Context(), selectMF)
			var ce *client.ConnectionError
			if !errors.As(err, &ce) || ce.Code != tc.wantCode || errors.Is(err, client.ErrClosed) {
				t.Fatalf("Transmit error %v, want a ConnectionError with code %d", err, tc.wantCode)
			}
			if got := ce.Error(); got != tc.wantText {
				t.Errorf("error text %q, want %q", got, tc.wantText)
			}
			// Later calls say the client is closed, and why.
			_, err = c.ListCards(t.Context())
			if !errors.Is(err, client.ErrClosed) || !errors.As(err, &ce) {
				t.Errorf("later call error %v, want ErrClosed wrapping the ConnectionError", err)
			}
		})
	}
}

func TestCancelMidRequest(t *testing.T) {
	got := make(chan struct{})
	code := make(chan int, 1)
	url := scripted(t, func(conn *websocket.Conn) {
		greet(t, conn)
		expect(t, conn, protocol.TypeCAPDU)
		close(got)
		code <- closeCode(conn) // never answers
	})
	c, err := client.Dial(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-got
		cancel()
	}()
	_, _, err = c.Transmit(ctx, selectMF)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Transmit error %v, want context.Canceled", err)
	}
	if c := <-code; c != websocket.CloseNormalClosure {
		t.Errorf("server saw close code %d, want 1000", c)
	}
	if _, err := c.ListCards(t.Context()); !errors.Is(err, client.ErrClosed) || !errors.Is(err, context.Canceled) {
		t.Errorf("later call error %v, want ErrClosed and the cancellation", err)
	}
}

func TestCloseDuringRequest(t *testing.T) {
	got := make(chan struct{})
	url := scripted(t, func(conn *websocket.Conn) {
		greet(t, conn)
		expect(t, conn, protocol.TypeListCards)
		close(got)
		closeCode(conn)
	})
	c, err := client.Dial(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		<-got
		c.Close()
	}()
	if _, err := c.ListCards(t.Context()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("ListCards error %v, want ErrClosed", err)
	}
	c.Close() // again: harmless
}

func TestBadReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(conn *websocket.Conn)
		want  string
	}{
		{"not json", func(conn *websocket.Conn) { sendRaw(conn, "this is not json") },
			"protocol error in reply to c_apdu: invalid message: not a JSON object"},
		{"bad hex", func(conn *websocket.Conn) { sendRaw(conn, `{"msg_type": "r_apdu", "response": "zz", "sw": "9000"}`) },
			`protocol error in reply to c_apdu: invalid r_apdu message: field "response": invalid hex digit 'z' at position 0`},
		{"bad sw", func(conn *websocket.Conn) { sendRaw(conn, `{"msg_type": "r_apdu", "response": "", "sw": "90"}`) },
			`protocol error in reply to c_apdu: invalid r_apdu message: field "sw" must be 4 hex digits, got 2`},
		{"unknown type", func(conn *websocket.Conn) { sendRaw(conn, `{"msg_type": "bogus"}`) },
			`protocol error in reply to c_apdu: invalid bogus message: unknown msg_type "bogus"`},
		{"unexpected type", func(conn *websocket.Conn) { sendRaw(conn, `{"cards": [], "msg_type": "list_cards_ack"}`) },
			"protocol error in reply to c_apdu: got a list_cards_ack message, want r_apdu"},
		{"binary", func(conn *websocket.Conn) { _ = conn.WriteMessage(websocket.BinaryMessage, []byte{0x90, 0x00}) },
			"protocol error in reply to c_apdu: binary frame; WSRC messages are text"},
		{"too big", func(conn *websocket.Conn) {
			sendRaw(conn, `{"msg_type": "r_apdu", "sw": "9000", "response": "`+strings.Repeat("00", 600)+`"}`)
		}, "protocol error in reply to c_apdu: frame larger than 1024 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code := make(chan int, 1)
			url := scripted(t, func(conn *websocket.Conn) {
				greet(t, conn)
				expect(t, conn, protocol.TypeCAPDU)
				tc.reply(conn)
				code <- closeCode(conn)
			})
			c, err := client.Dial(t.Context(), url, client.WithReadLimit(1024))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _, err = c.Transmit(t.Context(), selectMF)
			var pe *client.ProtocolError
			if !errors.As(err, &pe) || pe.Error() != tc.want {
				t.Fatalf("Transmit error %v\nwant ProtocolError %q", err, tc.want)
			}
			wantCode := websocket.CloseProtocolError
			if tc.name == "too big" {
				wantCode = websocket.CloseMessageTooBig // gorilla's own answer
			}
			if got := <-code; got != wantCode {
				t.Errorf("server saw close code %d, want %d", got, wantCode)
			}
			if _, err := c.ListCards(t.Context()); !errors.Is(err, client.ErrClosed) {
				t.Errorf("later call error %v, want ErrClosed", err)
			}
		})
	}
}

func TestUnsolicited(t *testing.T) {
	code := make(chan int, 1)
	url := scripted(t, func(conn *websocket.Conn) {
		greet(t, conn)
		sendRaw(conn, `{"message": "card 3b00 went away", "msg_type": "error"}`)
		sendRaw(conn, `{"new_state": "ready", "msg_type": "state_notification"}`)
		code <- closeCode(conn)
	})
	notices := make(chan string, 1)
	c, err := client.Dial(t.Context(), url, client.WithNoticeHandler(func(m string) { notices <- m }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := <-notices; n != "card 3b00 went away" {
		t.Errorf("notice %q", n)
	}
	if got := <-code; got != websocket.CloseProtocolError {
		t.Errorf("server saw close code %d, want 1002", got)
	}
	_, err = c.ListCards(t.Context())
	var pe *client.ProtocolError
	if !errors.Is(err, client.ErrClosed) || !errors.As(err, &pe) || pe.Reason != "unsolicited state_notification message" {
		t.Errorf("ListCards error %v", err)
	}
}

func TestHelloRefused(t *testing.T) {
	url := scripted(t, func(conn *websocket.Conn) {
		expect(t, conn, protocol.TypeHello)
		sendRaw(conn, `{"message": "too many users", "msg_type": "error"}`)
		closeCode(conn)
	})
	_, err := client.Dial(t.Context(), url)
	var se *client.ServerError
	if !errors.As(err, &se) || se.Message != "too many users" {
		t.Fatalf("Dial error %v", err)
	}
}

func TestAuthHeaders(t *testing.T) {
	var mu sync.Mutex
	var seen []http.Header
	srv := clienttest.Start(clienttest.Config{Authorize: func(r *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.Header.Clone())
		return nil
	}})
	defer srv.Close()
	hostPort := strings.TrimPrefix(srv.URL, "ws://")
	dial := func(url string, opts ...client.Option) {
		t.Helper()
		c, err := client.Dial(t.Context(), url, opts...)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	dial("ws://u%40x:p%3Aw@" + hostPort)
	dial("http://"+hostPort, client.WithHeader(http.Header{"X-Token": {"t1"}}))
	dial("ws://url:pw@"+hostPort, client.WithBasicAuth("opt", "pw2"))
	basic := func(user, pass string) string {
		r := &http.Request{Header: http.Header{}}
		r.SetBasicAuth(user, pass)
		return r.Header.Get("Authorization")
	}
	want := []struct{ auth, token string }{
		{basic("u@x", "p:w"), ""},
		{"", "t1"},
		{basic("opt", "pw2"), ""},
	}
	mu.Lock()
	defer mu.Unlock()
	for i, w := range want {
		if got := seen[i].Get("Authorization"); got != w.auth {
			t.Errorf("dial %d: Authorization %q, want %q", i, got, w.auth)
		}
		if got := seen[i].Get("X-Token"); got != w.token {
			t.Errorf("dial %d: X-Token %q, want %q", i, got, w.token)
		}
	}
}

func TestDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()
	for _, tc := range []struct{ url, want string }{
		{"ftp://127.0.0.1/", `server URL "ftp://127.0.0.1/": scheme must be ws or wss`},
		{"ws:///", `server URL "ws:///": no host`},
		{"ws://a b/", "server URL: parse"},
		{"ws://bob:secret@" + deadAddr + "/", "connecting to ws://" + deadAddr + "/: "},
	} {
		_, err := client.Dial(t.Context(), tc.url)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Dial(%q) error %v, want prefix %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("Dial(%q) error %v shows the password", tc.url, err)
		}
	}
}

// A trace of the frames is available through WithLogger.
func TestLogger(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	})
	_, c := startFake(t, clienttest.Config{}, client.WithLogger(newDebugLogger(w)))
	if _, err := c.ListCards(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{`frame="{\"msg_type\": \"list_cards\"}"`, `msg=recv`, `frame="{\"cards\": [{`, "msg=closed"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, buf.String())
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

var _ io.Writer = writerFunc(nil)

func newDebugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Close waits for the server to end the connection, so a server that
// frees the card before that lets the next connection select it at once.
func TestCloseThenReselect(t *testing.T) {
	srv, _ := startFake(t, clienttest.Config{})
	for range 20 {
		c, err := client.Dial(t.Context(), srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Select(t.Context(), "iccid", clienttest.TranscriptICCID); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

func TestTLS(t *testing.T) {
	srv, c := startFakeTLS(t)
	if !strings.HasPrefix(srv.URL, "wss://") {
		t.Fatalf("URL %s", srv.URL)
	}
	if _, err := c.ListCards(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Without the server's certificate the handshake fails.
	if _, err := client.Dial(t.Context(), srv.URL); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Dial without trust: %v", err)
	}
}

func startFakeTLS(t *testing.T) (*clienttest.Server, *client.Client) {
	srv := clienttest.Start(clienttest.Config{TLS: true, Cards: []*clienttest.Card{}})
	t.Cleanup(srv.Close)
	c, err := client.Dial(t.Context(), srv.URL, client.WithTLSConfig(srv.ClientTLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

// The server's keepalive pings are answered while the client is idle
// (pySim's server drops a user whose pongs stop for 20 s).
func TestAnswersPingsWhenIdle(t *testing.T) {
	pong := make(chan string, 1)
	url := scripted(t, func(conn *websocket.Conn) {
		greet(t, conn)
		conn.SetPongHandler(func(data string) error {
			pong <- data
			return nil
		})
		if err := conn.WriteControl(websocket.PingMessage, []byte("keepalive"), time.Now().Add(time.Second)); err != nil {
			t.Errorf("ping: %v", err)
		}
		closeCode(conn)
	})
	c, err := client.Dial(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := <-pong; got != "keepalive" {
		t.Errorf("pong %q", got)
	}
}

// TestDoneWhenServerGoes: an idle client learns from Done that the server
// closed the connection, and Err says why.
func TestDoneWhenServerGoes(t *testing.T) {
	url := scripted(t, func(conn *websocket.Conn) {
		greet(t, conn)
		msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down")
		_ = conn.WriteMessage(websocket.CloseMessage, msg)
		closeCode(conn)
	})
	c, err := client.Dial(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-c.Done()
	var ce *client.ConnectionError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("Err() = %v, want a ConnectionError with code 1001", err)
	}
}

// TestDoneAfterClose: Close ends the connection; Done is closed and Err
// wraps ErrClosed.
func TestDoneAfterClose(t *testing.T) {
	_, c := startFake(t, clienttest.Config{})
	if c.Err() != nil {
		t.Fatalf("Err() = %v on a fresh connection", c.Err())
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed on a fresh connection")
	default:
	}
	c.Close()
	<-c.Done()
	if !errors.Is(c.Err(), client.ErrClosed) {
		t.Fatalf("Err() = %v, want ErrClosed", c.Err())
	}
}

// A list of thousands of cards (here about 1.5 MB) is accepted: the read
// limit is far above one message's (protocol.MaxFrameSize), and
// ListCardsWhere narrows it. Issue 10, point 5.
func TestLongList(t *testing.T) {
	cards := make([]*clienttest.Card, 5000)
	for i := range cards {
		cards[i] = &clienttest.Card{
			Identities: protocol.Identities{protocol.IdentityATR: "3b9f96801fc78031e073fe211b575352435653494da3",
				protocol.IdentityICCID: fmt.Sprintf("89494400000%08d", i), protocol.IdentityEID: "89049032123451234512345678901235"},
			Addr: protocol.RemoteAddr{IP: "192.0.2.1", Port: 40000 + i%1000}, Agent: fmt.Sprintf("lab-pi-%d", i/8), Reader: fmt.Sprintf("sysmocom sysmoOCTSIM [CCID] (%d) 00 %02d", i/8, i%8),
		}
	}
	_, c := startFake(t, clienttest.Config{Cards: cards})
	got, err := c.ListCards(t.Context())
	if err != nil || len(got) != 5000 {
		t.Fatalf("ListCards: %d cards, %v", len(got), err)
	}
	sub, total, err := c.ListCardsWhere(t.Context(), protocol.ListCards{Agent: "lab-pi-7", Limit: 3})
	if err != nil || len(sub) != 3 || total != 8 || sub[0].Reader != "sysmocom sysmoOCTSIM [CCID] (7) 00 00" {
		t.Fatalf("ListCardsWhere: %d cards of %d, %v", len(sub), total, err)
	}
}
