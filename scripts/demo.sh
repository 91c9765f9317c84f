#!/usr/bin/env bash
# Demo: build logveil, start a central store and an agent on 127.0.0.1, feed them real log
# files (and a few lines with PII), then show the redacted archive and verify it.
# Usage: ./scripts/demo.sh [WORKDIR]   (default: a new temp dir, kept for you to look at)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release --locked
BIN=$ROOT/target/release/logveil
WORK=${1:-$(mktemp -d /tmp/logveil-demo.XXXXXX)}
mkdir -p "$WORK"/{logs,keys,trusted,archive,data}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TPORT=$(free_port)

"$BIN" keygen --out "$WORK/keys"
"$BIN" keygen --name store --out "$WORK/keys"               # the store's custody-ledger key
cp "$WORK/keys/agent.pub" "$WORK/trusted/demo-host.pub"     # enrolment

cat > "$WORK/collector.toml" <<TOML
[receiver]
listen = "127.0.0.1:$PORT"
archive_dir = "$WORK/archive"
trusted_keys_dir = "$WORK/trusted"
store_key = "$WORK/keys/store.key"

[telemetry]
listen = "127.0.0.1:$TPORT"
TOML
cat > "$WORK/agent.toml" <<TOML
[agent]
host_id = "demo-host"
data_dir = "$WORK/data"
signing_key = "$WORK/keys/agent.key"

[[sources]]
name = "system"
include = ["$WORK/logs/**/*.log"]

[sink]
url = "http://127.0.0.1:$PORT/v1/batches"
batch_max_wait = "500ms"
TOML
"$BIN" validate --config "$WORK/collector.toml"
"$BIN" validate --config "$WORK/agent.toml"

# Real logs, plus an application log with PII in it.
if [ -d ../shared/corpus/realworld ]; then
    cp ../shared/corpus/realworld/OpenSSH_2k.log ../shared/corpus/realworld/Apache_2k.log "$WORK/logs/"
fi
cat > "$WORK/logs/app.log" <<'LOG'
2026-12-03T10:00:01Z INFO order 114-3941689-8772232 confirmation sent to jane.doe@example.com
2026-12-03T10:00:02Z WARN payment declined card=4111 1111 1111 1111 phone=+14155550123
2026-12-03T10:00:03Z INFO login ok user=u-1842 from 203.0.113.77 ssn on file 641-31-9853
LOG
expected=$(cat "$WORK"/logs/*.log | wc -l)

"$BIN" receive --config "$WORK/collector.toml" 2>"$WORK/receiver.log" &
STORE=$!
"$BIN" run --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT=$!
trap 'kill $AGENT $STORE 2>/dev/null || true' EXIT

echo "waiting for $expected lines to reach the archive..."
for _ in $(seq 1 600); do
    n=$(python3 - "$TPORT" <<'PY' 2>/dev/null || echo 0
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=2).read().decode()
print(next((int(float(l.split()[-1])) for l in body.splitlines()
            if l.startswith("logveil_receiver_records_accepted_total")), 0))
PY
)
    [ "$n" -ge "$expected" ] && break
    sleep 0.1
done
echo "archived records: $n of $expected"

echo; echo "--- the application log as archived (PII redacted on the host):"
# Every local read of the archive is recorded in its custody ledger: who, why.
"$BIN" archive cat --archive "$WORK/archive" --who demo-operator --reason "demo walkthrough" \
    --record-with "$WORK/keys/store.key" | grep '"source":"system"' | grep app.log | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l); print(r["offset"], r["body"])'

echo; echo "--- verify:"
"$BIN" verify --archive "$WORK/archive" --keys "$WORK/trusted" --store-key "$WORK/keys/store.pub"

kill -TERM $AGENT; wait $AGENT || true
kill -TERM $STORE; wait $STORE || true
trap - EXIT
echo; echo "demo files are in $WORK (agent.log, receiver.log, archive/)"
