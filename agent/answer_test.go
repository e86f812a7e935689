package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/protocol"
)

// FuzzAnswer: whatever a server sends, the agent does not panic, answers
// with a message that encodes and decodes again, never answers an error
// with an error, answers every c_apdu with r_apdu or error, and ends the
// connection only on disconnect.
func FuzzAnswer(f *testing.F) {
	for _, tc := range malformedFrames {
		f.Add([]byte(tc.frame), false)
	}
	for _, seed := range []string{
		`{"command": "00a4040410a0000005591010ffffffff8900000100", "msg_type": "c_apdu"}`,
		`{"command": "80e2910006bf3e035c015a", "msg_type": "c_apdu"}`,
		`{"command": "00b000000a", "msg_type": "c_apdu"}`,
		`{"command": "00c0000010", "msg_type": "c_apdu"}`,
		`{"command": "00b0000000000000", "msg_type": "c_apdu"}`,
		`{"msg_type": "reset_req"}`,
		`{"new_state": "ready", "msg_type": "state_notification"}`,
		`{"message": "hi", "msg_type": "print"}`,
		`{"message": "oops", "msg_type": "error"}`,
		`{"msg_type": "disconnect"}`,
	} {
		f.Add([]byte(seed), false)
	}
	f.Add([]byte{0xff, 0x00}, true)
	s := NewSession(Config{Server: "ws://127.0.0.1:1/", Logger: testLogger()}, sim.New(sim.Config{T0GetResponse: true}), "fuzz")
	f.Fuzz(func(t *testing.T, data []byte, binary bool) {
		typ := websocket.TextMessage
		if binary {
			typ = websocket.BinaryMessage
		}
		reply, end := s.answer(context.Background(), frame{typ, data})
		in, inErr := protocol.Decode(data)
		if end != nil && (binary || inErr != nil || in.MsgType() != protocol.TypeDisconnect) {
			t.Fatalf("%q ends the connection: %v", data, end)
		}
		if errors.Is(end, errDisconnected) != (reply != nil && reply.MsgType() == protocol.TypeDisconnectAck) {
			t.Fatalf("%q: reply %#v with end %v", data, reply, end)
		}
		if reply == nil {
			if binary || inErr != nil {
				t.Fatalf("%q got no answer", data)
			}
			switch in.MsgType() {
			case protocol.TypeError, protocol.TypeStateNotification, protocol.TypePrint:
			default:
				t.Fatalf("%s got no answer", in.MsgType())
			}
			return
		}
		back, err := protocol.Decode(protocol.Encode(reply))
		if err != nil || back.MsgType() != reply.MsgType() {
			t.Fatalf("reply %#v does not survive the codec: %v", reply, err)
		}
		if e, ok := reply.(protocol.Error); ok && e.Message == "" {
			t.Fatalf("%q: error reply without a reason", data)
		}
		if binary || inErr != nil {
			if reply.MsgType() != protocol.TypeError {
				t.Fatalf("%q answered with %s", data, reply.MsgType())
			}
			return
		}
		switch in.MsgType() {
		case protocol.TypeError:
			t.Fatalf("error answered with %#v", reply)
		case protocol.TypeCAPDU:
			if reply.MsgType() != protocol.TypeRAPDU && reply.MsgType() != protocol.TypeError {
				t.Fatalf("c_apdu answered with %s", reply.MsgType())
			}
		}
	})
}
