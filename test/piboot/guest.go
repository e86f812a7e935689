package piboot

// The files the boot test adds to its copy of the image, besides the
// arm64 wsrc-server and wsrc binaries and the server's units from
// systemd/. Only the copy gets them: the image that ships has no server,
// no check unit and no test drop-ins.

// testConf is what a user would write to /boot/firmware/wsrc-agent.conf
// (format it with the token): the agent talks to the server on the same
// guest, with its token, one simulated card, under its own name. No
// HOSTNAME: the first boot names the guest after its machine id (QEMU's
// virt board has no serial number).
const testConf = `# wsrc-agent.conf of the boot test (test/piboot)
SERVER=ws://127.0.0.1:4221/
TOKEN=%s
NAME=piboot-agent
ARGS=--sim 1
`

// serverConf gives the server one agent account, so that the card port
// wants the token the agent got from wsrc-agent.conf (format it with the
// token's "sha256:..." hash). The user port stays anonymous on loopback.
const serverConf = `# boot test (test/piboot): the agent's account
[[agent]]
name = "piboot-agent"
token_hashes = ["%s"]
`

// serverDefaults lets `wsrc list` show each card agent's address and
// port, by which the check tells a new registration from an old one.
const serverDefaults = `# boot test (test/piboot): show agents' addresses in list_cards
WSRC_SERVER_ARGS="--show-remote-addr"
`

// simpleDropIn runs a unit as Type=simple without watchdog: for binaries
// that do not call sd_notify yet (the units are Type=notify with
// WatchdogSec=30s). Added only when the binary lacks NOTIFY_SOCKET.
const simpleDropIn = `# boot test (test/piboot): this binary does not speak sd_notify yet.
[Service]
Type=simple
WatchdogSec=0
`

// loopbackSocket moves a socket unit of the server to loopback (the way
// systemd/wsrc-server-user.socket documents): a server without accounts
// serves loopback only, and this one has none.
const loopbackSocket = `# boot test (test/piboot): loopback only, no accounts needed.
[Socket]
ListenStream=
ListenStream=127.0.0.1:%d
`

// testPreset keeps a first boot's `systemctl preset-all` from disabling
// the test's units.
const testPreset = `enable wsrc-server.service
enable wsrc-server-user.socket
enable wsrc-server-card.socket
enable piboot-check.service
`

// checkUnit runs the check script once the system is up; its output goes
// straight to the serial console.
const checkUnit = `# boot test (test/piboot): the checks, with markers on the console.
[Unit]
Description=WSRC image boot test checks
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/piboot-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
`

// checkScript is run by piboot-check.service in the guest. Each result is
// a line "@@piboot NAME DETAIL"; "@@log" lines carry diagnostics. It ends
// with "@@piboot done" and powers the guest off. Polling is the guest's
// only way to wait here; the host waits on the console's lines.
const checkScript = `#!/bin/sh
set -u
m() { echo "@@piboot $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
	m fail "$*"
	journalctl -b --no-pager -o short-monotonic -u wsrc-agent -u wsrc-server -u wsrc-pi-bootconf -u wsrc-pi-growroot 2>&1 | tail -n 120 | sed 's/^/@@log /'
	systemctl --no-pager --failed 2>&1 | sed 's/^/@@log /'
	m done
	systemctl poweroff
	exit 1
}
# card: "AGENT ADDRESS" of the first card the server lists, or nothing.
card() {
	wsrc list --json 2>/dev/null | tr ',{}' '\n\n\n' |
		sed -n 's/^ *"\(agent\|address\)": *"\([^"]*\)".*/\2/p' | head -n 2 | tr '\n' ' ' | sed 's/ $//'
}
# wait_card NOT SECONDS: wait for a listed card whose "AGENT ADDRESS"
# differs from NOT; print it.
wait_card() {
	end=$(($(cut -d. -f1 /proc/uptime) + $2))
	while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
		c=$(card)
		if [ -n "$c" ] && [ "$c" != "$1" ]; then
			echo "$c"
			return 0
		fi
		sleep 0.2
	done
	return 1
}
pid() { systemctl show -p MainPID --value "$1"; }

m start "uptime=$(up)"
c1=$(wait_card "" 300) || fail listed "no card listed after 300 s: $(wsrc list 2>&1 | tr '\n' ' ')"
m listed "uptime=$(up) card=$c1"
case $c1 in "piboot-agent 127.0.0.1:"*) ;; *) fail listed "unexpected agent/address: $c1" ;; esac

[ "$(systemctl is-active wsrc-agent.service)" = active ] || fail agent-active "$(systemctl is-active wsrc-agent.service)"
systemctl --no-pager status wsrc-agent.service 2>&1 | sed 's/^/@@log /'
m agent-active ok

st=$(tr -d '\r' </boot/firmware/wsrc-agent-status.txt | tr '\n' '|')
case $st in "OK: wsrc-agent.conf applied|"*) ;; *) fail bootconf "status file: $st" ;; esac
grep -qx 'WSRC_AGENT_SERVER="ws://127.0.0.1:4221/"' /etc/default/wsrc-agent || fail bootconf "/etc/default/wsrc-agent: $(tr '\n' '|' </etc/default/wsrc-agent)"
grep -qx 'WSRC_AGENT_TOKEN_FILE="/etc/wsrc/agent.token"' /etc/default/wsrc-agent || fail bootconf "no token file in /etc/default/wsrc-agent"
[ "$(stat -c '%a %U:%G' /etc/wsrc/agent.token)" = "640 root:wsrc" ] || fail bootconf "agent.token: $(stat -c '%a %U:%G' /etc/wsrc/agent.token)"
name=wsrc-pi-$(cut -c1-8 /etc/machine-id)
[ "$(hostname)" = "$name" ] && [ "$(cat /etc/hostname)" = "$name" ] || fail bootconf "host name $(hostname), /etc/hostname $(cat /etc/hostname), want $name"
case $st in *"|host name: $name (from the machine id;"*) ;; *) fail bootconf "status file does not name $name: $st" ;; esac
[ "$(systemctl is-enabled wsrc-agent.service)" = enabled ] || fail bootconf "agent $(systemctl is-enabled wsrc-agent.service)"
# The card port wants the token: the card got in with it.
journalctl -b -o cat -u wsrc-server.service | grep -q 'wsrc-server started.*card_auth=true' ||
	fail auth "the server does not require agent tokens: $(journalctl -b -o cat -u wsrc-server.service | grep 'wsrc-server started')"
m bootconf "ok status=$st"

[ -e /var/lib/wsrc-pi/growroot.done ] || fail growroot "not done"
m growroot "ok root_mib=$(df -m --output=size / | tail -n 1 | tr -d ' ') part_sectors=$(cat /sys/class/block/vda2/size)"

[ "$(systemctl is-enabled ssh.service 2>&1)" = disabled ] || fail ssh "ssh is $(systemctl is-enabled ssh.service 2>&1)"
! ls /etc/ssh/ssh_host_*key >/dev/null 2>&1 || fail ssh "ssh host keys shipped in the image"
[ "$(systemctl is-active systemd-timesyncd.service)" = active ] || fail timesync "$(systemctl is-active systemd-timesyncd.service)"
[ "$(systemctl is-enabled systemd-networkd.service)" = enabled ] || fail network "networkd $(systemctl is-enabled systemd-networkd.service)"
m system "ok ssh=off timesyncd=active networkd=enabled"

a1=$(pid wsrc-agent.service)
t0=$(up)
systemctl restart wsrc-agent.service || fail agent-restart "systemctl restart failed"
c2=$(wait_card "$c1" 120) || fail agent-restart "card not registered anew: $(card)"
a2=$(pid wsrc-agent.service)
[ "$a2" != "$a1" ] && [ "$a2" != 0 ] || fail agent-restart "agent PID $a1 -> $a2"
m agent-restart "ok from=$t0 at=$(up) card=$c2"

s1=$(pid wsrc-server.service)
n1=$(systemctl show -p NRestarts --value wsrc-server.service)
t0=$(up)
systemctl kill -s KILL wsrc-server.service
c3=$(wait_card "" 120) || fail server-kill "no card listed after the server was killed"
s2=$(pid wsrc-server.service)
n2=$(systemctl show -p NRestarts --value wsrc-server.service)
[ "$s2" != "$s1" ] && [ "$n2" -gt "$n1" ] || fail server-kill "server PID $s1 -> $s2, restarts $n1 -> $n2"
[ "$(pid wsrc-agent.service)" = "$a2" ] || fail server-kill "the agent was restarted instead of reconnecting"
m server-kill "ok from=$t0 at=$(up) card=$c3 restarts=$n2"

m done
systemctl poweroff
`
