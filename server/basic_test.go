package server

import (
	"testing"
	"testing/synctest"
)

func TestBasicRelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, Config{})
		c := e.uiccCard("3b00", "989444000000115513f4")
		u := e.helloUser()
		selectCard(t, u, "iccid", "8949440000001155314", `{"ATR": "3b00", "ICCID": "8949440000001155314"}`)
		expectJSON(t, c.Recv(), `{"new_state": "associated", "msg_type": "state_notification"}`)
		u.Send(`{"msg_type": "c_apdu", "command": "00a40004023f00"}`)
		expectCAPDU(t, c, "00a40004023f00")
		c.Send(`{"response": "6220", "sw": "9000", "msg_type": "r_apdu"}`)
		expectJSON(t, u.Recv(), `{"response": "6220", "sw": "9000", "msg_type": "r_apdu"}`)
		u.Close(1000, "")
		expectJSON(t, c.Recv(), `{"new_state": "ready", "msg_type": "state_notification"}`)
	})
}
