#!/usr/bin/env bash
# demo.sh — the whole WSRC path on one machine, on loopback:
#   wsrc (user) → wsrc-server → wsrc-agent → simulated SIM cards
# Starts the server and an agent with two simulated UICCs on free ports,
# lists the cards, reads EF.ICCID of one card through the relay, and stops
# what it started. Set BACKEND=pcsc (or ccid, auto) to use real readers
# instead of simulated cards.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
BACKEND=${BACKEND:-sim}
LOG=$(mktemp -d -t wsrc-demo.XXXXXX)
pids=()

cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then
        echo "demo failed (exit $rc); logs:"
        for f in "$LOG"/*.log; do echo "--- $f"; tail -n 30 "$f"; done
    fi
    rm -rf "$LOG"
}
trap cleanup EXIT

# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "no free port found" >&2; return 1
}

# wait_listen PORT waits until something accepts on 127.0.0.1:PORT.
wait_listen() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

user_port=$(free_port); card_port=$(free_port)
export WSRC_SERVER="ws://127.0.0.1:$user_port/"

step "wsrc-server: users on 127.0.0.1:$user_port, card agents on 127.0.0.1:$card_port"
"$BIN/wsrc-server" --user-bind-port "$user_port" --card-bind-port "$card_port" >"$LOG/server.log" 2>&1 &
pids+=($!)
wait_listen "$user_port"; wait_listen "$card_port"

if [[ $BACKEND == sim ]]; then
    step "wsrc-agent: two simulated UICCs"
    agent_args=(--sim 2)
else
    step "wsrc-agent: backend $BACKEND"
    agent_args=(--backend "$BACKEND")
fi
"$BIN/wsrc-agent" --server "ws://127.0.0.1:$card_port/" "${agent_args[@]}" >"$LOG/agent.log" 2>&1 &
pids+=($!)

step "waiting for the cards to be identified"
want=$([[ $BACKEND == sim ]] && echo 2 || echo 1)
for i in $(seq 100); do
    list=$("$BIN/wsrc" list --json 2>/dev/null || true)
    ready=$({ grep -o '"state": *"ready"' <<<"$list" || true; } | wc -l)
    busy=$({ grep -o '"state": *"init"' <<<"$list" || true; } | wc -l)
    [[ $ready -ge $want && $busy -eq 0 ]] && break
    [[ $i -eq 100 ]] && { echo "cards not ready after 10 s" >&2; exit 1; }
    sleep 0.1
done

step "wsrc list"
"$BIN/wsrc" list

iccid=$("$BIN/wsrc" list --json | grep -o '"ICCID": *"[0-9a-fA-F]*"' | head -n1 | sed 's/.*"\([0-9a-fA-F]*\)"$/\1/')
step "wsrc apdu --iccid $iccid: SELECT MF, SELECT EF.ICCID, READ BINARY"
out=$("$BIN/wsrc" apdu --iccid "$iccid" 00a40004023f00 00a40004022fe2 00b000000a)
echo "$out"
# EF.ICCID holds the ICCID as BCD with swapped nibbles, padded with f.
raw=$(echo "$out" | tail -n1 | awk '{print $2}')
decoded=""
for ((i = 0; i < ${#raw}; i += 2)); do decoded+="${raw:i+1:1}${raw:i:1}"; done
echo "EF.ICCID decoded: ${decoded%%f*} (the card was selected by $iccid)"

step "wsrc reset --iccid $iccid"
"$BIN/wsrc" reset --iccid "$iccid"

step "done: stopping server and agent"
