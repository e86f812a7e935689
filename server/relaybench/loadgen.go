package relaybench

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/protocol"
)

var dialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}

// benchICCID returns a distinct 19-digit ICCID for simulated card i.
func benchICCID(i int) string { return fmt.Sprintf("8949%015d", i) }

// fakeAgent is a card agent reduced to its wire behaviour: it serves one
// simulated UICC over one WebSocket. It stands in for wsrc-agent so that
// the load generator spends as little CPU as possible.
type fakeAgent struct {
	conn  *websocket.Conn
	card  *sim.Card
	ready chan struct{} // closed at the first state_notification "ready"
}

// dialAgent connects a simulated card with the given ICCID.
func dialAgent(ctx context.Context, url, iccid string) (*fakeAgent, error) {
	conn, _, err := dialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("card dial: %w", err)
	}
	a := &fakeAgent{conn: conn, card: sim.New(sim.Config{ICCID: iccid}), ready: make(chan struct{})}
	if err := conn.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.Hello{ClientType: protocol.ClientCard, ATR: a.card.ATR()})); err != nil {
		conn.Close()
		return nil, err
	}
	return a, nil
}

// serve answers the server until the connection ends. It is run by the
// scenario's goroutine group and ends when conn is closed.
func (a *fakeAgent) serve() {
	readyOnce := sync.Once{}
	buf := make([]byte, 0, 512)
	for {
		_, data, err := a.conn.ReadMessage()
		if err != nil {
			return
		}
		m, err := protocol.Decode(data)
		if err != nil {
			continue
		}
		switch m := m.(type) {
		case protocol.CAPDU:
			r, _ := protocol.RAPDUOf(a.card.Process(m.Command)) // the simulated card always gives SW1 SW2
			buf = protocol.AppendEncode(buf[:0], r)
			if a.conn.WriteMessage(websocket.TextMessage, buf) != nil {
				return
			}
		case protocol.ResetReq:
			if a.conn.WriteMessage(websocket.TextMessage, protocol.Encode(protocol.ResetResp{ATR: a.card.ATR()})) != nil {
				return
			}
		case protocol.StateNotification:
			if m.NewState == protocol.StateReady {
				readyOnce.Do(func() { close(a.ready) })
			}
		}
	}
}

// user is one user session bound to one card.
type user struct {
	conn *websocket.Conn
}

var helloUser = protocol.Encode(protocol.Hello{ClientType: protocol.ClientUser})

func dialUser(ctx context.Context, url, iccid string) (*user, error) {
	conn, _, err := dialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("user dial: %w", err)
	}
	u := &user{conn: conn}
	if err := u.roundTrip(helloUser, protocol.TypeHelloAck); err != nil {
		conn.Close()
		return nil, err
	}
	sel := protocol.Encode(protocol.SelectCard{IDType: "iccid", IDStr: iccid})
	if err := u.roundTrip(sel, protocol.TypeSelectCardAck); err != nil {
		conn.Close()
		return nil, err
	}
	return u, nil
}

// roundTrip sends one frame and checks that the reply has the wanted type.
// It avoids a full decode on the hot path: the reply's msg_type is the last
// key in our server's frames, so a suffix check suffices, with a decode as
// the fallback for anything else.
func (u *user) roundTrip(frame []byte, want string) error {
	if err := u.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		return err
	}
	_, data, err := u.conn.ReadMessage()
	if err != nil {
		return err
	}
	if bytes.HasSuffix(data, []byte(`"msg_type": "`+want+`"}`)) {
		return nil
	}
	m, err := protocol.Decode(data)
	if err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	if m.MsgType() != want {
		return fmt.Errorf("got %s, want %s: %s", m.MsgType(), want, data)
	}
	return nil
}

// benchAPDU is READ BINARY of EF.ICCID (selected by identification):
// 10 bytes of data and 9000 from the simulated card.
var benchAPDU = protocol.Encode(protocol.CAPDU{Command: []byte{0x00, 0xb0, 0x00, 0x00, 0x0a}})
