// Package clienttest runs an in-process WSRC server for the tests and
// examples of code built on package client, such as the wsrc command.
//
// The fake speaks the user side of the protocol the way our server does:
// pySim's messages, the new ATR in reset_resp (unless Config.PySimReset),
// and an `error` reply to every request it cannot carry out. There are no
// agents: each card is a Go value whose Transmit and Reset functions
// answer in place of a real card. It listens on a loopback port chosen by
// the system (httptest).
package clienttest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/protocol"
)

// Card is one card the fake server offers.
type Card struct {
	// Identities must hold at least the ATR (key protocol.IdentityATR).
	Identities protocol.Identities
	// Addr, Agent and Reader are shown in list_cards_ack.
	Addr          protocol.RemoteAddr
	Agent, Reader string
	// Init makes the card look as if it were still being identified:
	// listed in state "init" and not selectable.
	Init bool
	// Transmit answers a command APDU. A non-nil error is sent to the
	// user as an `error` message with the error's text, or, if it wraps
	// ErrHangUp, ends the connection. Nil answers every command with
	// SW 6D00.
	Transmit func(command []byte) (response []byte, sw uint16, err error)
	// Reset returns the ATR after a reset, or an error as for Transmit.
	// Nil keeps the ATR in Identities.
	Reset func() (atr []byte, err error)
}

// ErrHangUp, wrapped by an error from Card.Transmit or Card.Reset, makes
// the server close the user's connection with code 1011 and the error's
// text as the reason, instead of answering: the way pySim's server
// reacts when the card's agent has gone.
var ErrHangUp = errors.New("hang up")

// Config describes a fake server.
type Config struct {
	Cards []*Card
	// PySimReset makes reset_resp carry no atr, as pySim's server.
	PySimReset bool
	// Authorize, if set, vets each upgrade request; an error refuses it
	// with 401 and the error's text as the body.
	Authorize func(r *http.Request) error
	// TLS serves wss:// with a self-signed certificate; dial with
	// client.WithTLSConfig(srv.ClientTLSConfig()).
	TLS bool
}

// Server is a running fake WSRC server (user port only).
type Server struct {
	// URL is the server's address, ws://127.0.0.1:port/.
	URL string

	cfg      Config
	srv      *httptest.Server
	upgrader websocket.Upgrader

	wg sync.WaitGroup // one per connection handler past registration

	mu       sync.Mutex // guards the fields below
	closed   bool
	conns    map[*websocket.Conn]struct{}
	holder   map[*Card]*websocket.Conn // which connection selected a card
	received []string
}

// Start starts a fake server. Close it when done.
func Start(cfg Config) *Server {
	s := &Server{
		cfg:    cfg,
		conns:  make(map[*websocket.Conn]struct{}),
		holder: make(map[*Card]*websocket.Conn),
	}
	if cfg.TLS {
		s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serveHTTP))
	} else {
		s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	}
	s.URL = "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/"
	return s
}

// ClientTLSConfig returns a TLS configuration that trusts the server's
// certificate (Config.TLS), for client.WithTLSConfig.
func (s *Server) ClientTLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	if cert := s.srv.Certificate(); cert != nil {
		pool.AddCert(cert)
	}
	return &tls.Config{RootCAs: pool}
}

// CertificatePEM returns the server's certificate in PEM form (Config.TLS),
// for programs that take a CA file; nil without TLS.
func (s *Server) CertificatePEM() []byte {
	cert := s.srv.Certificate()
	if cert == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// Close closes every connection and waits for their handlers to end.
func (s *Server) Close() {
	s.srv.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Received returns every frame the server has received so far, in order,
// over all connections.
func (s *Server) Received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.received...)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(r); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
	}
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered with an HTTP error
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	s.session(conn)
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.release(conn)
	_ = conn.Close()
}

// release frees the card conn holds, if any. It runs before the server
// closes the connection, so a user whose connection has ended can select
// the card again at once.
func (s *Server) release(conn *websocket.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for card, h := range s.holder {
		if h == conn {
			delete(s.holder, card)
		}
	}
}

// session runs one user connection until it ends.
func (s *Server) session(conn *websocket.Conn) {
	var selected *Card
	hello := false
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.received = append(s.received, string(data))
		s.mu.Unlock()
		m, err := protocol.Decode(data)
		if err != nil {
			if !send(conn, protocol.Error{Message: err.Error()}) {
				return
			}
			continue
		}
		var out protocol.Message
		switch m := m.(type) {
		case protocol.Hello:
			if m.ClientType != protocol.ClientUser {
				out = protocol.Error{Message: "this is the user port; client_type must be user"}
			} else {
				hello = true
				out = protocol.HelloAck{}
			}
		case protocol.ListCards, protocol.SelectCard, protocol.CAPDU, protocol.ResetReq:
			if !hello {
				out = protocol.Error{Message: "hello expected first"}
				break
			}
			out, selected = s.request(conn, m, selected)
		default:
			out = protocol.Error{Message: fmt.Sprintf("unexpected %s message", m.MsgType())}
		}
		if e, ok := out.(hangUp); ok {
			s.release(conn)
			msg := websocket.FormatCloseMessage(websocket.CloseInternalServerErr, e.err.Error())
			_ = conn.WriteMessage(websocket.CloseMessage, msg)
			return
		}
		if !send(conn, out) {
			return
		}
	}
}

// hangUp is request's answer when the connection is to end.
type hangUp struct{ err error }

func (hangUp) MsgType() string { return "" }

// cardError turns an error from a Card function into the answer.
func cardError(err error) protocol.Message {
	if errors.Is(err, ErrHangUp) {
		return hangUp{err}
	}
	return protocol.Error{Message: err.Error()}
}

// request answers one user request; selected is the user's card.
func (s *Server) request(conn *websocket.Conn, m protocol.Message, selected *Card) (protocol.Message, *Card) {
	switch m := m.(type) {
	case protocol.ListCards:
		return s.list(), selected
	case protocol.SelectCard:
		if selected != nil {
			return protocol.Error{Message: "a card is already selected on this connection"}, selected
		}
		card, err := s.selectCard(conn, m)
		if err != nil {
			return protocol.Error{Message: err.Error()}, nil
		}
		return protocol.SelectCardAck{Identities: card.Identities}, card
	case protocol.CAPDU:
		if selected == nil {
			return protocol.Error{Message: "no card selected: send select_card first"}, nil
		}
		if selected.Transmit == nil {
			return protocol.RAPDU{Response: []byte{}, SW: 0x6d00}, selected
		}
		resp, sw, err := selected.Transmit(m.Command)
		if err != nil {
			return cardError(err), selected
		}
		if resp == nil {
			resp = []byte{}
		}
		return protocol.RAPDU{Response: resp, SW: sw}, selected
	default: // protocol.ResetReq
		if selected == nil {
			return protocol.Error{Message: "no card selected: send select_card first"}, nil
		}
		atr, err := protocol.DecodeHex(selected.Identities[protocol.IdentityATR])
		if selected.Reset != nil {
			atr, err = selected.Reset()
		}
		if err != nil {
			return cardError(err), selected
		}
		if s.cfg.PySimReset {
			atr = nil
		}
		return protocol.ResetResp{ATR: atr}, selected
	}
}

func (s *Server) list() protocol.ListCardsAck {
	s.mu.Lock()
	defer s.mu.Unlock()
	cards := make([]protocol.CardInfo, 0, len(s.cfg.Cards))
	for _, c := range s.cfg.Cards {
		state := protocol.StateReady
		switch {
		case c.Init:
			state = protocol.StateInit
		case s.holder[c] != nil:
			state = protocol.StateAssociated
		}
		cards = append(cards, protocol.CardInfo{
			RemoteAddr: c.Addr, Identities: c.Identities, State: state, Agent: c.Agent, Reader: c.Reader,
		})
	}
	return protocol.ListCardsAck{Cards: cards}
}

func (s *Server) selectCard(conn *websocket.Conn, m protocol.SelectCard) (*Card, error) {
	key := strings.ToUpper(m.IDType)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cfg.Cards {
		if !matches(key, c.Identities[key], m.IDStr) {
			continue
		}
		if c.Init {
			return nil, fmt.Errorf("card %s == %s is still being identified", m.IDType, m.IDStr)
		}
		if s.holder[c] != nil {
			return nil, fmt.Errorf("card %s == %s is in use by another user", m.IDType, m.IDStr)
		}
		s.holder[c] = conn
		return c, nil
	}
	return nil, fmt.Errorf("no card with %s == %s", m.IDType, m.IDStr)
}

// matches compares identities case-insensitively, ICCIDs also with and
// without their trailing f padding.
func matches(key, have, want string) bool {
	if have == "" {
		return false
	}
	if key == protocol.IdentityICCID {
		have, want = strings.TrimRight(have, "fF"), strings.TrimRight(want, "fF")
	}
	return strings.EqualFold(have, want)
}

func send(conn *websocket.Conn, m protocol.Message) bool {
	return conn.WriteMessage(websocket.TextMessage, protocol.Encode(m)) == nil
}
