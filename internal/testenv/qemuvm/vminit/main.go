// Command vminit is PID 1 of the QEMU test VMs. It mounts the kernel file
// systems, brings up loopback, runs the vmscript found in the initramfs
// (/vmscript) or on the kernel command line (vmscript=<base64>), reports
// every step on the console as vmscript marker lines, stops what it
// started and powers the machine off.
//
// It must be linked statically (CGO_ENABLED=0): it runs before anything
// else exists. Run as an ordinary process (not PID 1) it only runs the
// script, which is how its tests drive it.
package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// scriptPath is where the test puts the script in the initramfs.
const scriptPath = "/vmscript"

func main() {
	con := newConsole(os.Stdout)
	pid1 := os.Getpid() == 1
	if pid1 {
		for _, err := range setupSystem() {
			con.event(vmscript.KindLog, "", "setup: "+err.Error())
		}
	}
	code := 0
	steps, err := loadScript()
	if err != nil {
		con.event(vmscript.KindFail, "0", err.Error())
		code = 1
	} else {
		r := newRunner(con, os.Environ())
		if !r.run(steps) {
			code = 1
		}
		r.stopAll()
	}
	con.event(vmscript.KindDone, "", "")
	if pid1 {
		powerOff()
	}
	os.Exit(code)
}

// loadScript reads the script from the initramfs or the kernel command
// line, the file first.
func loadScript() ([]vmscript.Step, error) {
	if b, err := os.ReadFile(scriptPath); err == nil {
		return vmscript.Parse(string(b))
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("no %s and no /proc/cmdline: %w", scriptPath, err)
	}
	for _, w := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(w, "vmscript="); ok {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return nil, fmt.Errorf("decoding vmscript= from the command line: %w", err)
			}
			return vmscript.Parse(string(b))
		}
	}
	return nil, fmt.Errorf("no script: neither %s nor vmscript= on the command line", scriptPath)
}
