// Package deb holds only tests: they check the Debian packages that
// scripts/package.sh (make deb) builds into build/deb/: wsrc-agent,
// wsrc-server and wsrc for amd64, arm64 and armhf. They test what was
// built, so they never build anything themselves.
//
//   - contents (dpkg-deb --fsys-tarfile): the exact list of paths, their
//     modes and root ownership, and that each packaged unit, udev rule,
//     sysusers file, /etc/default file and maintainer script is the one in
//     systemd/ and deploy/nfpm/scripts/ (a stale package fails: rebuild).
//   - binaries: `file` (architecture, static pure Go or a PIE linked to the
//     target's loader), readelf (the agent's NEEDED libraries, BIND_NOW,
//     ARMv7 hard-float on armhf), and each binary started once with
//     --version (natively, or under qemu-user on the oldest Raspberry Pi CPU
//     of its architecture), printing the version that the changelog names.
//   - control (dpkg-deb -f): fields, the exact Depends/Suggests, and that
//     the agent's shared-library Depends still equal what dpkg-shlibdeps
//     computes; the conffiles list.
//   - maintainer scripts: shellcheck, and lintian on all packages (no error
//     or warning, no unused override).
//   - install, upgrade, remove and purge of the amd64 packages with the real
//     dpkg, in a throw-away copy of this machine: a private mount namespace
//     (unshare) with an overlay on / whose writes go to a tmpfs, entered with
//     chroot. Once as in a chroot or container (no /run/systemd/system:
//     nothing started, units enabled, user created), once with a fake
//     systemd (a recording systemctl and udevadm stand in) to check what the
//     scripts start, restart and stop. The upgrade package is the built one
//     repacked with a higher version and a changed /etc/default file.
//   - the cloud-init examples in deploy/cloud-init (need no package): YAML
//     with known keys (python3-yaml), cloud-init's schema check where
//     cloud-init is installed, shellcheck on their scripts, and the
//     configuration they write accepted by `wsrc-server check-config` and
//     `wsrc-agent check-config` once the placeholders hold real values.
//   - the Pi example's install script run in the sandbox against the amd64
//     wsrc-agent package, served from 127.0.0.1: a placeholder token, no
//     package for the architecture and a wrong SHA-256 are refused with
//     nothing installed; the right values install the package and write
//     agent.toml and agent.token as 0640 root:wsrc.
//
// Without packages in build/deb (or $WSRC_DEB_DIR) the tests skip; with
// WSRC_DEB_TEST=1 (make deb-test) they fail instead. A missing tool
// (lintian, shellcheck, qemu-user-static, unshare, not root) skips its test
// with the reason, and fails it under CI=true or WSRC_DEB_TEST=1.
package deb
