// Package units holds only tests: they check the files in systemd/ (unit
// files, socket units, sysusers.d and udev rules) with systemd's own tools
// where this machine has them, and with Go-level parsers everywhere.
//
//   - systemd-analyze verify, on a throw-away root holding the host's unit
//     directory, our units and stand-in executables at their ExecStart paths
//     (verify insists that ExecStart binaries exist; the real ones need not
//     be built for that). Any warning fails the test, not only a non-zero
//     exit: verify exits 0 on an unknown key.
//   - systemd-analyze security --offline=yes: each service's exposure score
//     is logged and must stay under a threshold.
//   - systemd-sysusers --dry-run on an empty root.
//   - udevadm verify where systemd is new enough (v254+); everywhere, a
//     small parser and evaluator of udev rules that runs the rules against
//     simulated USB devices (readers, composites, vendor-class, others).
//   - the settings the programs rely on (Type=notify, WatchdogSec=, the
//     socket names of package internal/sdnotify, the default ports of
//     package protocol, the vendor readers of package ccid).
//
// A missing tool skips its test with the reason, except under CI=true,
// where it fails: CI must install it (Debian package systemd).
package units
