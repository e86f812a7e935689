package deb

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// target describes how the binaries of one Debian architecture look and
// where they run.
type target struct {
	static  string // `file -b` of the static pure-Go programs, as a regexp
	agent   string // `file -b` of the agent
	qemu    string // qemu-user binary; "" = runs natively on amd64
	cpu     string // the oldest Raspberry Pi CPU for the pure-Go programs
	cpuCgo  string // ... and for the agent (Debian's armhf libraries are ARMv7)
	loader  string // the agent's dynamic loader, which qemu-user needs on the host
	extraSO []string
}

var targets = map[string]target{
	"amd64": {
		static: `^ELF 64-bit LSB executable, x86-64, .*statically linked`,
		agent:  `^ELF 64-bit LSB pie executable, x86-64, .*dynamically linked, interpreter /lib64/ld-linux-x86-64\.so\.2`,
		loader: "/lib64/ld-linux-x86-64.so.2",
	},
	"arm64": {
		static: `^ELF 64-bit LSB executable, ARM aarch64, .*statically linked`,
		agent:  `^ELF 64-bit LSB pie executable, ARM aarch64, .*dynamically linked, interpreter /lib/ld-linux-aarch64\.so\.1`,
		qemu:   "qemu-aarch64-static", cpu: "cortex-a53", cpuCgo: "cortex-a53",
		loader:  "/lib/ld-linux-aarch64.so.1",
		extraSO: []string{"ld-linux-aarch64.so.1"}, // cgo PIEs on ARM name their loader too
	},
	"armhf": {
		static: `^ELF 32-bit LSB executable, ARM, EABI5 .*statically linked`,
		agent:  `^ELF 32-bit LSB pie executable, ARM, EABI5 .*dynamically linked, interpreter /lib/ld-linux-armhf\.so\.3`,
		qemu:   "qemu-arm-static", cpu: "arm1176", cpuCgo: "cortex-a7",
		loader:  "/lib/ld-linux-armhf.so.3",
		extraSO: []string{"ld-linux-armhf.so.3"},
	},
}

// programs maps each package to its binary and the argument that prints
// the version.
var programs = map[string]struct{ bin, versionArg string }{
	"wsrc-agent":  {"/usr/bin/wsrc-agent", "--version"},
	"wsrc-server": {"/usr/bin/wsrc-server", "--version"},
	"wsrc":        {"/usr/bin/wsrc", "version"},
}

// TestBinaries checks each packaged program: its ELF type and architecture
// (`file`), the agent's libraries and hardening (readelf), and that it
// starts and prints the version its changelog names, natively or under
// qemu-user on the oldest Raspberry Pi CPU it is meant for (ARMv6 for the
// armhf server and CLI, ARMv7 for the armhf agent).
func TestBinaries(t *testing.T) {
	all := builtDebs(t)
	need(t, "file", "file")
	need(t, "readelf", "binutils")
	for _, key := range sortedKeys(all) {
		d := all[key]
		t.Run(key, func(t *testing.T) {
			tg := targets[d.Arch]
			prog := programs[d.Name]
			bin := extract(t, d, prog.bin)
			desc := strings.TrimSpace(mustRun(t, nil, "file", "-b", bin))
			pattern := tg.static
			if d.Name == "wsrc-agent" {
				pattern = tg.agent
			}
			if !regexp.MustCompile(pattern).MatchString(desc) {
				t.Errorf("file: %s\nwant %s", desc, pattern)
			}
			dyn := mustRun(t, nil, "readelf", "-d", bin)
			if d.Name == "wsrc-agent" {
				checkAgentELF(t, bin, dyn, tg)
			} else if !strings.Contains(dyn, "no dynamic section") {
				t.Errorf("static program has a dynamic section:\n%s", dyn)
			}

			m := builtVersion.FindStringSubmatch(changelog(t, d))
			if m == nil {
				t.Fatal("changelog names no program version")
			}
			out := runProgram(t, d, bin, prog.versionArg)
			if want := filepath.Base(prog.bin) + " " + m[1]; !strings.Contains(out, want) {
				t.Errorf("%s %s printed %q, want %q", prog.bin, prog.versionArg, out, want)
			}
		})
	}
}

// checkAgentELF checks the agent's dynamic section: exactly the libraries
// the package depends on, immediate binding, PIE; and on armhf ARMv7
// hard-float code, which is what Debian's armhf libraries are.
func checkAgentELF(t *testing.T, bin, dyn string, tg target) {
	t.Helper()
	var needed []string
	for _, m := range regexp.MustCompile(`\(NEEDED\)\s+Shared library: \[(.*)\]`).FindAllStringSubmatch(dyn, -1) {
		needed = append(needed, m[1])
	}
	want := append([]string{"libusb-1.0.so.0", "libpcsclite.so.1", "libc.so.6"}, tg.extraSO...)
	slices.Sort(needed)
	slices.Sort(want)
	if !slices.Equal(needed, want) {
		t.Errorf("NEEDED %q, want %q (update the package's Depends with them)", needed, want)
	}
	if !regexp.MustCompile(`\(FLAGS_1\)\s+Flags:.*\bNOW\b.*\bPIE\b`).MatchString(dyn) {
		t.Errorf("not linked with -z now as a PIE (hardening):\n%s", dyn)
	}
	if tg.qemu == "qemu-arm-static" {
		attrs := mustRun(t, nil, "readelf", "-A", bin)
		for _, w := range []string{"Tag_CPU_arch: v7", "Tag_ABI_VFP_args: VFP registers"} {
			if !strings.Contains(attrs, w) {
				t.Errorf("readelf -A lacks %q:\n%s", w, attrs)
			}
		}
	}
}

// runProgram runs a packaged binary with one argument, natively or under
// qemu-user, and returns its output; it skips (fails when strict) where
// this machine cannot run it.
func runProgram(t *testing.T, d *debPackage, bin, arg string) string {
	t.Helper()
	tg := targets[d.Arch]
	name, args := bin, []string{arg}
	if tg.qemu == "" {
		if hostArch(t) != d.Arch {
			skipOrFail(t, "cannot run "+d.Arch+" binaries on "+hostArch(t))
		}
	} else {
		q := need(t, tg.qemu, "qemu-user-static")
		cpu := tg.cpu
		if d.Name == "wsrc-agent" {
			cpu = tg.cpuCgo
		}
		name, args = q, []string{"-cpu", cpu, bin, arg}
	}
	if d.Name == "wsrc-agent" {
		if _, err := os.Stat(tg.loader); err != nil {
			skipOrFail(t, tg.loader+" missing: the "+d.Arch+" libraries are not installed (scripts/cross-build.sh deps)")
		}
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
