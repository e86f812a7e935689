package units

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// vpcdInstance is the instance of wsrc-vpcd@.service the tests check.
const vpcdInstance = "wsrc-vpcd@lab1.service"

// TestVPCDTemplate: an instance of the wsrc-vpcd@ template passes
// systemd-analyze verify with its environment file in place, its sandbox
// scores under the limit, and it has the settings `wsrc vpcd` relies on.
func TestVPCDTemplate(t *testing.T) {
	const name = "wsrc-vpcd@.service"
	u := loadUnit(t, name)
	checkSettings(t, name, u, []want{
		{"Service", "Type", "exec"},
		{"Service", "EnvironmentFile", "/etc/wsrc/vpcd/%i.env"},
		{"Service", "ExecStart", "/usr/bin/wsrc vpcd --vpcd ${WSRC_VPCD} --id ${WSRC_CARD} $WSRC_VPCD_ARGS"},
		{"Service", "DynamicUser", "yes"},
		{"Service", "Restart", "on-failure"},
		{"Service", "RestartPreventExitStatus", "2"},
		{"Unit", "StartLimitIntervalSec", "0"},
		{"Service", "RestrictAddressFamilies", "AF_INET AF_INET6"},
		{"Install", "WantedBy", "multi-user.target"},
	})

	sa, help := analyze(t)
	root := unitRoot(t, readUnits(t))
	env := filepath.Join(root, "etc/wsrc/vpcd/lab1.env")
	if err := os.MkdirAll(filepath.Dir(env), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "WSRC_SERVER=wss://relay.example.org:4220/\nWSRC_CARD=iccid=8949440000001155314\nWSRC_VPCD=127.0.0.1:35963\nWSRC_VPCD_ARGS=--share\n"
	if err := os.WriteFile(env, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := verify(t, sa, help, root, vpcdInstance); len(p) > 0 {
		t.Errorf("systemd-analyze verify %s:\n%s", vpcdInstance, strings.Join(p, "\n"))
	}
	if !strings.Contains(help, "--offline") {
		t.Skip("systemd-analyze security has no --offline here (needs systemd 250+); skipping the exposure check")
	}
	out, err := run(t, sa, "security", "--offline=yes", "--root="+root, "--no-pager", vpcdInstance)
	m := exposureRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in the output (err %v):\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(m[2], 64)
	const limit = 1.5
	t.Logf("%s: exposure %.1f (limit %.1f)", vpcdInstance, score, limit)
	if score > limit {
		t.Errorf("%s: exposure %.1f above %.1f:\n%s", vpcdInstance, score, limit, out)
	}
}
