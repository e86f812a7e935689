package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/internal/auth"
)

// pySim's clients cannot set headers, but the Python websockets library
// they use turns a URL's user information into HTTP Basic credentials
// (wss://alice:secret@host:4220/). This test runs exactly that client,
// Debian's python3-websockets (10.4 in bookworm; pySim itself needs ≥ 13
// for websockets.sync, whose URL handling is the same), against the
// server over TLS. Skipped when the module is missing, unless CI=true.

// wsClientPy connects to argv[1] trusting the CA file argv[2], says hello
// and lists the cards; it prints each reply, or "status N" when the
// upgrade is refused.
const wsClientPy = `
import asyncio, json, ssl, sys
import websockets

async def main(url, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        async with websockets.connect(url, ssl=ctx) as ws:
            await ws.send(json.dumps({"msg_type": "hello", "client_type": "user"}))
            print(await ws.recv())
            await ws.send(json.dumps({"msg_type": "list_cards"}))
            print(await ws.recv())
    except Exception as e:
        status = getattr(e, "status_code", None)
        if status is None and getattr(e, "response", None) is not None:
            status = e.response.status_code
        if status is None:
            raise
        print("status", status)

asyncio.run(main(sys.argv[1], sys.argv[2]))
`

// pythonWithWebsockets finds a Python that has the websockets module.
func pythonWithWebsockets(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import websockets").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("python3 with the websockets module is missing (Debian package python3-websockets)")
	}
	t.Skip("python3-websockets is not installed")
	return ""
}

func TestPythonWebsocketsURLCredentials(t *testing.T) {
	py := pythonWithWebsockets(t)
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := ca.writeCert(t, dir, "py")
	caFile := filepath.Join(dir, "ca.pem")
	script := filepath.Join(dir, "client.py")
	for f, b := range map[string][]byte{caFile: ca.pem, script: []byte(wsClientPy)} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := writeConfig(t, `
[user_port]
bind_host = "127.0.0.1"
[[user]]
name = "alice"
password_hash = "`+cheapHash(t, "alice-pw")+`"
all_cards = true
[[user]]
name = "ci"
token_hashes = ["`+auth.HashToken(tokUser).String()+`"]
all_cards = true
`)
	s, o, ex := testSettings(t, path, "--tls-cert", certFile, "--tls-key", keyFile)
	r := start(t, s, o, ex)
	port := strconv.Itoa(s.userPort)
	client := func(userinfo string) string {
		t.Helper()
		out, err := exec.Command(py, script, "wss://"+userinfo+"@localhost:"+port+"/", caFile).CombinedOutput()
		if err != nil {
			t.Fatalf("python client (%s): %v\n%s", userinfo, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, ui := range []string{"alice:alice-pw", "ci:" + tokUser, ":" + tokUser} {
		got := client(ui)
		if !strings.Contains(got, `"hello_ack"`) || !strings.Contains(got, `"list_cards_ack"`) {
			t.Errorf("%s: %s", ui, got)
		}
	}
	for _, ui := range []string{"alice:wrong", "alice:wsrc_nope", "ci:"} {
		if got := client(ui); got != "status 401" {
			t.Errorf("%s: %s, want status 401", ui, got)
		}
	}
	waitLog(t, r, `msg="authentication failed" port=user remote=127.0.0.1:`)
	if strings.Contains(r.log.String(), "alice-pw") || strings.Contains(r.log.String(), tokUser) {
		t.Error("a secret reached the log")
	}
}
