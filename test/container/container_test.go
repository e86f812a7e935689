package container

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// repoRoot is the repository, relative to this package.
const repoRoot = "../.."

// simICCID is the ICCID of the agent's first simulated card (card/sim).
const simICCID = "8949440000001155314"

// needDocker skips the test unless a Docker daemon answers (fails it
// under WSRC_CONTAINER_TEST=1).
func needDocker(t *testing.T) {
	t.Helper()
	msg := ""
	if _, err := exec.LookPath("docker"); err != nil {
		msg = "no docker client"
	} else if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		msg = "no Docker daemon: " + strings.TrimSpace(string(out))
	}
	if msg == "" {
		return
	}
	if os.Getenv("WSRC_CONTAINER_TEST") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg + "; skipping")
}

// run runs a command with a time limit and returns its combined output.
func run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// cleanup runs a docker command from a t.Cleanup function, where the
// test's context is already cancelled; errors are of no interest there.
func cleanup(args ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = exec.CommandContext(ctx, "docker", args...).Run()
}

// mustRun is run that fails the test on an error.
func mustRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// randomName returns prefix and a random suffix, for images and containers.
func randomName(prefix string) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

// buildImage builds the image with deploy/container/build.sh and removes
// it when the test ends.
func buildImage(t *testing.T) string {
	t.Helper()
	tag := randomName("wsrc-server-test:")
	mustRun(t, nil, filepath.Join(repoRoot, "deploy", "container", "build.sh"), "prebuilt", tag)
	t.Cleanup(func() { cleanup("rmi", "--force", tag) })
	return tag
}

// imageConfig is the part of `docker image inspect` the test checks.
type imageConfig struct {
	Size   int64
	Config struct {
		User         string
		ExposedPorts map[string]struct{}
		Env          []string
		Entrypoint   []string
		Cmd          []string
		StopSignal   string
	}
}

// TestImage checks the image's configuration, that it has no shell, and
// that without accounts it refuses to serve (exit status 2).
func TestImage(t *testing.T) {
	needDocker(t)
	tag := buildImage(t)

	var imgs []imageConfig
	if err := json.Unmarshal([]byte(mustRun(t, nil, "docker", "image", "inspect", tag)), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("docker image inspect: %v", err)
	}
	img := imgs[0]
	if img.Config.User != "65532:65532" {
		t.Errorf("User %q, want 65532:65532", img.Config.User)
	}
	if got := slices.Sorted(maps.Keys(img.Config.ExposedPorts)); !slices.Equal(got, []string{"4220/tcp", "4221/tcp"}) {
		t.Errorf("ExposedPorts %q, want 4220/tcp 4221/tcp", got)
	}
	if !slices.Equal(img.Config.Entrypoint, []string{"/usr/bin/wsrc-server"}) || len(img.Config.Cmd) != 0 {
		t.Errorf("Entrypoint %q Cmd %q, want [/usr/bin/wsrc-server] and none", img.Config.Entrypoint, img.Config.Cmd)
	}
	for _, e := range []string{"WSRC_SERVER_USER_BIND_HOST=0.0.0.0", "WSRC_SERVER_CARD_BIND_HOST=0.0.0.0"} {
		if !slices.Contains(img.Config.Env, e) {
			t.Errorf("Env %q lacks %s", img.Config.Env, e)
		}
	}
	if img.Config.StopSignal != "SIGTERM" {
		t.Errorf("StopSignal %q, want SIGTERM", img.Config.StopSignal)
	}
	if img.Size > 30<<20 {
		t.Errorf("image is %d MB: more than the server binary?", img.Size>>20)
	}
	t.Logf("image size %.1f MB", float64(img.Size)/(1<<20))

	if out, err := run(t, nil, "docker", "run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true"); err == nil {
		t.Errorf("the image has a shell:\n%s", out)
	}
	if out, _ := run(t, nil, "docker", "run", "--rm", tag, "--version"); !strings.HasPrefix(out, "wsrc-server ") {
		t.Errorf("--version printed %q", out)
	}

	// No configuration: both ports on 0.0.0.0 without accounts.
	out, err := run(t, nil, "docker", "run", "--rm", "--read-only", tag)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(out, "open to anyone") {
		t.Errorf("without accounts: %v (want exit status 2, refusing to open the ports)\n%s", err, out)
	}
}

// TestServeReadOnly runs the image as docs/deploy.md does, with a
// configuration mounted read-only, and relays a simulated card to a user.
func TestServeReadOnly(t *testing.T) {
	needDocker(t)
	tag := buildImage(t)
	bins := buildPrograms(t, "wsrc-server", "wsrc-agent", "wsrc")

	userToken, userHash := genToken(t, bins)
	agentToken, agentHash := genToken(t, bins)
	dir := t.TempDir()
	config := filepath.Join(dir, "server.toml")
	text := fmt.Sprintf("[[user]]\nname = \"ci\"\ntoken_hashes = [%q]\nall_cards = true\n\n"+
		"[[agent]]\nname = \"sim-agent\"\ntoken_hashes = [%q]\n", userHash, agentHash)
	if err := os.WriteFile(config, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	// As docs/deploy.md says: readable by the container's group 65532 only.
	if os.Geteuid() == 0 {
		if err := os.Chown(config, 0, 65532); err != nil {
			t.Fatal(err)
		}
	} else if err := os.Chmod(config, 0o644); err != nil {
		t.Fatal(err)
	}

	// Host networking with loopback binds: every packet of the test stays
	// on 127.0.0.1, and dockerd needs no bridge (it can run with
	// --bridge=none, as .ci/run starts it).
	userAddr := "127.0.0.1:" + freePort(t)
	cardAddr := "127.0.0.1:" + freePort(t)
	name := randomName("wsrc-server-test-")
	mustRun(t, nil, "docker", "run", "--detach", "--name", name,
		"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--volume", config+":/etc/wsrc/server.toml:ro",
		"--network", "host",
		"--env", "WSRC_SERVER_USER_BIND_HOST=127.0.0.1", "--env", "WSRC_SERVER_USER_BIND_PORT="+strings.Split(userAddr, ":")[1],
		"--env", "WSRC_SERVER_CARD_BIND_HOST=127.0.0.1", "--env", "WSRC_SERVER_CARD_BIND_PORT="+strings.Split(cardAddr, ":")[1],
		"--env", "WSRC_SERVER_STATUS_BIND=127.0.0.1:"+freePort(t),
		tag)
	t.Cleanup(func() { cleanup("rm", "--force", name) })

	logs := start(t, "docker", []string{"logs", "--follow", name}, nil)
	logs.waitFor(t, regexp.MustCompile(`msg="wsrc-server started".*user_auth=true card_auth=true`))

	agent := start(t, bins["wsrc-agent"], []string{"--config", "", "--server", "ws://" + cardAddr + "/", "--sim", "1"},
		[]string{"WSRC_AGENT_TOKEN=" + agentToken})
	agent.waitFor(t, regexp.MustCompile(`msg="state notification".*state=ready`))

	list := mustRun(t, nil, bins["wsrc"], "list", "--server", "ws://ci:"+userToken+"@"+userAddr+"/")
	if !strings.Contains(list, simICCID) || !strings.Contains(list, "sim-agent") {
		t.Errorf("wsrc list through the container:\n%s\nwant the card %s of sim-agent", list, simICCID)
	}
	if out, err := run(t, nil, bins["wsrc"], "list", "--server", "ws://ci:wrong@"+userAddr+"/"); err == nil {
		t.Errorf("wsrc list with a wrong token succeeded:\n%s", out)
	}

	agent.stop(t)
	mustRun(t, nil, "docker", "stop", "--time", "20", name)
	if code := mustRun(t, nil, "docker", "inspect", "--format", "{{.State.ExitCode}}", name); code != "0" {
		t.Errorf("after docker stop the server exited with status %s, want 0", code)
	}
	logs.wait(t)
	if out := logs.text(); strings.Contains(out, "level=ERROR") {
		t.Errorf("the server logged errors:\n%s", out)
	}
}

// buildPrograms builds the named commands of this repository into a
// temporary directory.
func buildPrograms(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{}
	args := []string{"build", "-o", dir + "/"}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
		bins[n] = filepath.Join(dir, n)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bins
}

// genToken returns a new token and its hash from `wsrc-server gen-token`.
func genToken(t *testing.T, bins map[string]string) (token, hash string) {
	t.Helper()
	out, err := exec.Command(bins["wsrc-server"], "gen-token").Output()
	lines := strings.Fields(string(out))
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[1], "sha256:") {
		t.Fatalf("wsrc-server gen-token: %v: %q", err, out)
	}
	return lines[0], lines[1]
}

// process is a program the test started, whose output (stdout and stderr)
// a goroutine collects line by line until the program ends.
type process struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the reader goroutine has seen EOF
	notify chan struct{} // a new line arrived (capacity 1, never blocks)
	exited chan struct{} // closed when the program has been reaped; then err is set
	err    error         // the program's exit, from cmd.Wait

	mu    sync.Mutex // guards lines
	lines []string
}

// start starts a program and stops it (SIGKILL) when the test ends.
func start(t *testing.T, name string, args, env []string) *process {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), notify: make(chan struct{}, 1), exited: make(chan struct{})}
	go func() { // owned by p: ends at EOF, when the program has exited
		defer close(p.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.notify <- struct{}{}:
			default:
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() { // owned by p: reaps the program and ends the reader
		p.err = cmd.Wait()
		w.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		<-p.done
	})
	return p
}

// text returns everything the program wrote so far.
func (p *process) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitFor waits until the program writes a line matching re, for at most
// a minute (a healthy run takes about a second), and fails the test if it
// ends or the minute passes first.
func (p *process) waitFor(t *testing.T, re *regexp.Regexp) {
	t.Helper()
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		lines := p.lines[seen:]
		seen = len(p.lines)
		p.mu.Unlock()
		if slices.ContainsFunc(lines, re.MatchString) {
			return
		}
		select {
		case <-p.notify:
		case <-p.done:
			if !slices.ContainsFunc(p.snapshot(seen), re.MatchString) {
				t.Fatalf("%s ended before writing /%s/:\n%s", p.cmd.Path, re, p.text())
			}
			return
		case <-deadline.C:
			t.Fatalf("%s did not write /%s/ within a minute:\n%s", p.cmd.Path, re, p.text())
		}
	}
}

// snapshot returns the lines from index i on.
func (p *process) snapshot(i int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines[i:])
}

// stop sends SIGTERM and waits for the program to end with exit status 0.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stopping %s: %v", p.cmd.Path, err)
	}
	p.wait(t)
	if p.err != nil {
		t.Errorf("%s after SIGTERM: %v\n%s", p.cmd.Path, p.err, p.text())
	}
}

// wait waits up to a minute for the program to end and its output to be
// read.
func (p *process) wait(t *testing.T) {
	t.Helper()
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for _, ch := range []chan struct{}{p.exited, p.done} {
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("%s did not end:\n%s", p.cmd.Path, p.text())
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
