package piboot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment of TestPiBoot.
const (
	envRun     = "WSRC_PIBOOT"         // "1": run the boot test
	envImage   = "WSRC_PI_IMAGE"       // the image (default build/pi-image/wsrc-pi-arm64.img)
	envTimeout = "WSRC_PIBOOT_TIMEOUT" // for the whole guest run (default 25m)
	envKeep    = "WSRC_PIBOOT_KEEP"    // a directory to keep the console log in
)

// growBy is how much larger the test's copy of the image is than the
// image: the first boot must grow the root partition by about this much.
const growBy = 512 << 20

func TestPiBoot(t *testing.T) {
	if os.Getenv(envRun) != "1" {
		t.Skipf("the Raspberry Pi image boot test runs with %s=1 (make pi-image-test; needs make pi-image first, about 5-15 min under TCG)", envRun)
	}
	root := repoRoot(t)
	img := os.Getenv(envImage)
	if img == "" {
		img = filepath.Join(root, "build", "pi-image", "wsrc-pi-arm64.img")
	}
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("no image (run make pi-image, or set %s): %v", envImage, err)
	}
	for _, tool := range []string{"qemu-system-aarch64", "mcopy", "mtype", "debugfs", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (deploy/pi-image/build.sh test-deps installs it): %v", tool, err)
		}
	}
	timeout := 25 * time.Minute
	if s := os.Getenv(envTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s: %v", envTimeout, err)
		}
		timeout = d
	}
	dir := t.TempDir()

	// A sparse copy, larger than the image, as a bigger SD card would be.
	disk := filepath.Join(dir, "disk.img")
	run(t, "cp", "--sparse=always", img, disk)
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, fi.Size()+growBy); err != nil {
		t.Fatal(err)
	}
	parts, err := readMBR(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 || parts[0].typ != 0x0c || parts[1].typ != 0x83 {
		t.Fatalf("partitions %+v, want FAT32 LBA (0c) and Linux (83)", parts)
	}
	fat := fmt.Sprintf("%s@@%d", disk, parts[0].start*512)
	ext4 := fmt.Sprintf("%s?offset=%d", disk, parts[1].start*512)

	// The boot partition as the Pi's firmware reads it: config.txt names
	// kernel and initramfs, cmdline.txt the kernel's command line.
	config := mtools(t, "mtype", "-i", fat, "::config.txt")
	kernel := configValue(config, `(?m)^kernel=(\S+)`)
	initrd := configValue(config, `(?m)^initramfs (\S+)`)
	if kernel == "" || initrd == "" {
		t.Fatalf("config.txt names no kernel= or initramfs:\n%s", config)
	}
	mtools(t, "mcopy", "-i", fat, "::"+kernel, filepath.Join(dir, "vmlinuz"))
	mtools(t, "mcopy", "-i", fat, "::"+initrd, filepath.Join(dir, "initrd"))
	cmdline := strings.TrimSpace(mtools(t, "mtype", "-i", fat, "::cmdline.txt"))
	if !strings.Contains(cmdline, "root=LABEL=RASPIROOT") {
		t.Fatalf("cmdline.txt: %q", cmdline)
	}
	// What the user does: edit wsrc-agent.conf on the boot partition.
	token := newToken(t)
	confFile := filepath.Join(dir, "wsrc-agent.conf")
	writeFile(t, confFile, fmt.Sprintf(testConf, token), 0o644)
	mtools(t, "mcopy", "-o", "-i", fat, confFile, "::wsrc-agent.conf")

	addTestPayload(t, root, dir, ext4, token)

	append_ := guestCmdline(cmdline)
	t.Logf("kernel %s, initrd %s, command line %q", kernel, initrd, append_)
	res := boot(t, dir, disk, append_, timeout)
	for _, name := range []string{"listed", "agent-active", "bootconf", "growroot", "system", "agent-restart", "server-kill", "done"} {
		if _, ok := res.marks[name]; !ok {
			t.Errorf("no %q marker", name)
		}
	}
	// growroot took the room the copy has beyond the image.
	if m := regexp.MustCompile(`part_sectors=(\d+)`).FindStringSubmatch(res.marks["growroot"].detail); m != nil {
		got, _ := strconv.ParseInt(m[1], 10, 64)
		if want := parts[1].count + growBy/512; got != want {
			t.Errorf("root partition has %d sectors after growroot, want %d", got, want)
		}
	} else if _, ok := res.marks["growroot"]; ok {
		t.Errorf("growroot marker without part_sectors: %q", res.marks["growroot"].detail)
	}
	if t.Failed() {
		return
	}
	t.Logf("card listed %.1f s after QEMU started (guest uptime %s); whole run %.1f s",
		res.marks["listed"].host.Seconds(), uptime(res.marks["listed"].detail), res.total.Seconds())
}

// mark is one "@@piboot NAME DETAIL" line of the console.
type mark struct {
	detail string
	host   time.Duration // since QEMU started
}

type bootResult struct {
	marks map[string]mark
	total time.Duration
}

// boot runs QEMU until the guest powers off, the test fails in the guest,
// or the timeout passes; console lines are logged as they come.
func boot(t *testing.T, dir, disk, cmdline string, timeout time.Duration) bootResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{
		"-M", "virt", "-cpu", "cortex-a53", "-accel", "tcg", "-smp", "2", "-m", "1024",
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
		// No network device at all: everything stays inside the guest.
		"-nic", "none",
		"-kernel", filepath.Join(dir, "vmlinuz"), "-initrd", filepath.Join(dir, "initrd"),
		"-append", cmdline,
		"-drive", "file=" + disk + ",format=raw,if=none,id=sd,cache=unsafe",
		"-device", "virtio-blk-pci,drive=sd",
		"-device", "virtio-rng-pci",
	}
	cmd := exec.CommandContext(ctx, "qemu-system-aarch64", args...)
	cmd.Stdin = nil
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "console.log")
	if keep := os.Getenv(envKeep); keep != "" {
		logPath = filepath.Join(keep, "piboot-console.log")
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	res := bootResult{marks: map[string]mark{}}
	markRE := regexp.MustCompile(`@@piboot (\S+) ?(.*)$`)
	var tail []string
	sc := bufio.NewScanner(io.TeeReader(out, logFile))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if m := markRE.FindStringSubmatch(line); m != nil {
			res.marks[m[1]] = mark{detail: m[2], host: time.Since(start)}
			t.Logf("%7.1fs %s %s", time.Since(start).Seconds(), m[1], m[2])
			if m[1] == "fail" {
				t.Errorf("guest check failed: %s", m[2])
			}
		} else if strings.HasPrefix(line, "@@log ") {
			t.Log(line)
		}
		tail = append(tail, line)
		if len(tail) > 150 {
			tail = tail[1:]
		}
	}
	err = cmd.Wait()
	res.total = time.Since(start)
	if ctx.Err() != nil {
		t.Errorf("guest did not finish within %v (console log %s); last lines:\n%s", timeout, logPath, strings.Join(tail, "\n"))
	} else if err != nil {
		t.Errorf("QEMU: %v\n%s", err, stderr.String())
	}
	if _, ok := res.marks["done"]; !ok && !t.Failed() {
		t.Errorf("guest stopped before the checks ended; last console lines:\n%s", strings.Join(tail, "\n"))
	}
	if t.Failed() {
		t.Logf("console log: %s", logPath)
	}
	return res
}

// guestCmdline is the image's cmdline.txt for QEMU's virt board: the
// Pi's consoles replaced by the PL011 (ttyAMA0); quiet, so that kernel
// messages do not cut into the markers; no waiting for a network the
// guest does not have (the image waits up to a minute for one); a
// kernel panic ends QEMU.
func guestCmdline(cmdline string) string {
	var out []string
	for _, f := range strings.Fields(cmdline) {
		if !strings.HasPrefix(f, "console=") {
			out = append(out, f)
		}
	}
	return strings.Join(append(out, "console=ttyAMA0", "quiet", "panic=-1",
		"systemd.mask=systemd-networkd-wait-online.service"), " ")
}

func uptime(detail string) string {
	if m := regexp.MustCompile(`uptime=(\S+)`).FindStringSubmatch(detail); m != nil {
		return m[1] + " s"
	}
	return "?"
}

// addTestPayload puts the server, the CLI, their units and the check
// unit into the copy's root file system with debugfs (no mount needed).
func addTestPayload(t *testing.T, root, dir, ext4, token string) {
	t.Helper()
	server := goBuildArm64(t, root, dir, "wsrc-server")
	cli := goBuildArm64(t, root, dir, "wsrc")
	agent := filepath.Join(dir, "wsrc-agent")
	debugfs(t, ext4, false, "dump /usr/bin/wsrc-agent "+agent)

	add := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, "payload-"+strings.ReplaceAll(name, "/", "_"))
		writeFile(t, p, content, mode)
		return p
	}
	type put struct {
		host, guest string
		mode        string
	}
	puts := []put{
		{server, "/usr/bin/wsrc-server", "0100755"},
		{cli, "/usr/bin/wsrc", "0100755"},
		{filepath.Join(root, "systemd", "wsrc-server.service"), "/usr/lib/systemd/system/wsrc-server.service", "0100644"},
		{add("default", serverDefaults, 0o644), "/etc/default/wsrc-server", "0100644"},
		{add("server.toml", fmt.Sprintf(serverConf, fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(token)))), 0o644), "/etc/wsrc/server.toml", "0100644"},
		{add("preset", testPreset, 0o644), "/etc/systemd/system-preset/00-piboot.preset", "0100644"},
		{add("unit", checkUnit, 0o644), "/etc/systemd/system/piboot-check.service", "0100644"},
		{add("check", checkScript, 0o755), "/usr/local/sbin/piboot-check", "0100755"},
	}
	links := map[string]string{
		"/etc/systemd/system/multi-user.target.wants/wsrc-server.service":  "/usr/lib/systemd/system/wsrc-server.service",
		"/etc/systemd/system/multi-user.target.wants/piboot-check.service": "/etc/systemd/system/piboot-check.service",
	}
	dirs := []string{"/etc/wsrc", "/etc/systemd/system-preset", "/etc/systemd/system/multi-user.target.wants"}
	serverBin := readFile(t, server)
	// Socket activation only once the server takes its listeners from
	// systemd; until then it binds the ports itself.
	if bytes.Contains(serverBin, []byte("LISTEN_FDS")) {
		dirs = append(dirs, "/etc/systemd/system/sockets.target.wants")
		for s, port := range map[string]int{"wsrc-server-user.socket": 4220, "wsrc-server-card.socket": 4221} {
			puts = append(puts, put{filepath.Join(root, "systemd", s), "/usr/lib/systemd/system/" + s, "0100644"})
			links["/etc/systemd/system/sockets.target.wants/"+s] = "/usr/lib/systemd/system/" + s
			d := "/etc/systemd/system/" + s + ".d"
			dirs = append(dirs, d)
			puts = append(puts, put{add(s+"-dropin", fmt.Sprintf(loopbackSocket, port), 0o644), d + "/piboot-loopback.conf", "0100644"})
		}
	} else {
		t.Log("wsrc-server has no socket activation yet: the socket units stay off")
	}
	for name, bin := range map[string][]byte{"wsrc-server": serverBin, "wsrc-agent": readFile(t, agent)} {
		if bytes.Contains(bin, []byte("NOTIFY_SOCKET")) {
			continue
		}
		t.Logf("%s does not call sd_notify yet: test-only drop-in Type=simple, WatchdogSec=0", name)
		d := "/etc/systemd/system/" + name + ".service.d"
		dirs = append(dirs, d)
		puts = append(puts, put{add(name+"-dropin", simpleDropIn, 0o644), d + "/piboot-simple.conf", "0100644"})
	}

	var script []string
	for _, d := range dirs {
		if !debugfsExists(t, ext4, d) {
			script = append(script, "mkdir "+d)
		}
	}
	for _, p := range puts {
		script = append(script,
			"rm "+p.guest, // a package may already have put one there
			"write "+p.host+" "+p.guest,
			"sif "+p.guest+" mode "+p.mode,
			"sif "+p.guest+" uid 0",
			"sif "+p.guest+" gid 0")
	}
	for l, target := range links {
		script = append(script, "symlink "+l+" "+target)
	}
	debugfs(t, ext4, true, script...)
	for _, p := range puts {
		if !debugfsExists(t, ext4, p.guest) {
			t.Fatalf("debugfs did not write %s", p.guest)
		}
	}
}

// newToken makes an agent token the way `wsrc-server gen-token` does.
func newToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "wsrc_" + base64.RawURLEncoding.EncodeToString(b)
}

// goBuildArm64 builds ./cmd/NAME for linux/arm64 without cgo.
func goBuildArm64(t *testing.T, root, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s for arm64: %v\n%s", name, err, b)
	}
	return out
}

// debugfs runs commands on the ext4 file system (read-write with rw).
func debugfs(t *testing.T, fs string, rw bool, cmds ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cmds")
	writeFile(t, f, strings.Join(cmds, "\n")+"\n", 0o644)
	args := []string{"-f", f}
	if rw {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.Command("debugfs", append(args, fs)...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %v: %v\n%s", cmds, err, b)
	}
	return string(b)
}

func debugfsExists(t *testing.T, fs, path string) bool {
	t.Helper()
	out := debugfs(t, fs, false, "stat "+path)
	return strings.Contains(out, "Inode:") && !strings.Contains(out, "File not found")
}

// partition is one MBR entry, in 512-byte sectors.
type partition struct {
	typ          byte
	start, count int64
}

// readMBR reads the primary partitions of a DOS partition table.
func readMBR(path string) ([]partition, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sec [512]byte
	if _, err := io.ReadFull(f, sec[:]); err != nil {
		return nil, fmt.Errorf("reading the MBR: %w", err)
	}
	if sec[510] != 0x55 || sec[511] != 0xaa {
		return nil, errors.New("no MBR signature")
	}
	var parts []partition
	for i := range 4 {
		e := sec[446+16*i:]
		if e[4] == 0 {
			continue
		}
		parts = append(parts, partition{typ: e[4], start: int64(binary.LittleEndian.Uint32(e[8:])), count: int64(binary.LittleEndian.Uint32(e[12:]))})
	}
	return parts, nil
}

func configValue(config, re string) string {
	if m := regexp.MustCompile(re).FindStringSubmatch(config); m != nil {
		return m[1]
	}
	return ""
}

func mtools(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return string(b)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if b, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, b)
	}
}

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
