#!/usr/bin/env python3
"""End-to-end throughput benchmark: file -> agent -> central store on loopback.

Generates ~SIZE_MB of mixed log lines (JSON and plain, ~200 bytes each, about one in ten
with PII), starts the central store and the agent from a cold start (empty data dir and
archive), and waits until the store has accepted every line. Reports MB/s and lines/s end to
end, the agent's CPU seconds and its peak RSS (VmHWM).

    cargo build --release && python3 bench/e2e.py [--size-mb 200] [--files 4]

Everything runs on 127.0.0.1; nothing else is contacted.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "logveil")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gen_lines(rng, n):
    users = ["alice", "bob", "carol", "dave", "erin"]
    paths = ["/api/v1/orders", "/api/v1/items", "/health", "/api/v2/customers/search"]
    for i in range(n):
        r = rng.random()
        pii = rng.random() < 0.1
        if r < 0.5:
            rec = {
                "ts": "2026-12-03T18:%02d:%02d.%03dZ" % (i // 60000 % 60, i // 1000 % 60, i % 1000),
                "level": rng.choice(["info", "warn", "debug"]),
                "svc": "orders",
                "msg": "order %d synced in %dms" % (rng.randrange(10**9), rng.randrange(900)),
                "trace_id": "%032x" % rng.getrandbits(128),
                "user": rng.choice(users),
            }
            if pii:
                rec["buyer_email"] = "buyer%d@example.com" % rng.randrange(10**6)
            line = json.dumps(rec, separators=(",", ":"))
        else:
            who = ("from 10.%d.%d.%d" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))) if pii else "from unix:"
            line = "Dec  3 18:07:14 web-1 app[%d]: GET %s status=%d bytes=%d %s took=%dms req=%016x" % (
                rng.randrange(1, 65535), rng.choice(paths), rng.choice([200, 200, 200, 404, 500]),
                rng.randrange(100000), who, rng.randrange(2000), rng.getrandbits(64))
        # pad to ~200 bytes
        if len(line) < 190:
            line += " pad=" + "x" * (190 - len(line))
        yield line


def metric(port, name):
    try:
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    except OSError:
        return None
    for l in body.splitlines():
        if l.startswith(name) and not l.startswith("#"):
            return float(l.split()[-1])
    return None


def proc_stats(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    hwm = 0
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmHWM:"):
                hwm = int(l.split()[1]) * 1024
    return cpu, hwm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--batch-bytes", type=int, default=1048576, help="sink.batch_max_bytes")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="logveil-bench-")
    try:
        for d in ["logs", "keys", "trusted", "archive", "data"]:
            os.makedirs(os.path.join(work, d))
        rng = random.Random(42)
        target = args.size_mb * 1024 * 1024
        handles = [open(os.path.join(work, "logs", "bench-%d.log" % i), "w") for i in range(args.files)]
        size = lines = 0
        for line in gen_lines(rng, 10**9):
            handles[lines % args.files].write(line + "\n")
            size += len(line) + 1
            lines += 1
            if size >= target:
                break
        for h in handles:
            h.close()
        subprocess.run([BIN, "keygen", "--out", os.path.join(work, "keys")], check=True, capture_output=True)
        shutil.copy(os.path.join(work, "keys", "agent.pub"), os.path.join(work, "trusted", "bench.pub"))
        port, rport, aport = free_port(), free_port(), free_port()
        with open(os.path.join(work, "collector.toml"), "w") as f:
            f.write('[receiver]\nlisten = "127.0.0.1:%d"\narchive_dir = "%s/archive"\ntrusted_keys_dir = "%s/trusted"\n'
                    '[telemetry]\nlisten = "127.0.0.1:%d"\n' % (port, work, work, rport))
        with open(os.path.join(work, "agent.toml"), "w") as f:
            f.write('[agent]\nhost_id = "bench"\ndata_dir = "%s/data"\nsigning_key = "%s/keys/agent.key"\n'
                    '[[sources]]\nname = "bench"\ninclude = ["%s/logs/*.log"]\n'
                    '[sink]\nurl = "http://127.0.0.1:%d/v1/batches"\nbatch_max_bytes = %d\n'
                    '[telemetry]\nlisten = "127.0.0.1:%d"\n' % (work, work, work, port, args.batch_bytes, aport))
        devnull = open(os.devnull, "w")
        store = subprocess.Popen([BIN, "receive", "--config", os.path.join(work, "collector.toml")], stderr=devnull)
        deadline = time.time() + 30
        while metric(rport, "logveil_receiver_records_accepted") is None:
            if time.time() > deadline:
                sys.exit("store did not start")
            time.sleep(0.05)
        t0 = time.time()
        agent = subprocess.Popen([BIN, "run", "--config", os.path.join(work, "agent.toml")], stderr=open(os.environ["BENCH_AGENT_LOG"], "w") if os.environ.get("BENCH_AGENT_LOG") else devnull)
        cpu = hwm = 0
        deadline = t0 + 1800
        while True:
            done = metric(rport, "logveil_receiver_records_accepted_total") or 0
            if agent.poll() is None:
                cpu, hwm = proc_stats(agent.pid)
            if done >= lines:
                break
            if time.time() > deadline or agent.poll() is not None:
                sys.exit("incomplete: %d of %d records" % (done, lines))
            time.sleep(0.02)
        elapsed = time.time() - t0
        cpu, hwm = proc_stats(agent.pid)
        scpu, shwm = proc_stats(store.pid)
        agent.terminate()
        agent.wait()
        store.terminate()
        store.wait()
        mb = size / 1e6
        print("input: %.1f MB, %d lines in %d files" % (mb, lines, args.files))
        print("elapsed: %.2f s (agent start to last record acknowledged)" % elapsed)
        print("throughput: %.1f MB/s, %.0f lines/s" % (mb / elapsed, lines / elapsed))
        print("agent CPU: %.2f s (%.0f%% of one core)" % (cpu, 100 * cpu / elapsed))
        print("agent peak RSS: %.1f MB" % (hwm / 1e6))
        print("central store CPU: %.2f s, peak RSS %.1f MB" % (scpu, shwm / 1e6))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
