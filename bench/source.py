#!/usr/bin/env python3
"""File source benchmarks: the real agent and central store on 127.0.0.1.

    cargo build --release && python3 bench/source.py [--seconds 60]

1. idle-ish: 1,000 files in one glob, 100 lines/s written in total (round robin) for
   --seconds; the agent's CPU (% of one core, over the run after a 10 s warm-up) and its
   RSS (current and peak).
2. discovery latency: 20 files created one by one while the agent runs; for each, the time
   from creating it (with one line) to the agent reading that line (the record's
   `timestamp`, taken when the agent read it; same clock).
3. quiet-file latency under a hot file: one file written at full speed for 10 s; 2 s in, a
   line is appended to a quiet file; the time until the agent read it, and whether that
   was before the hot writer stopped.
One file at full speed (MB/s) is bench/e2e.py with --files 1.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import BIN, free_port, metric, proc_stats  # noqa: E402


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1]) * 1024
    return 0


def parse_ts(s):
    # 2026-12-03T18:07:14.123456Z
    import datetime
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class World:
    def __init__(self, extra_source=""):
        self.work = tempfile.mkdtemp(prefix="logveil-srcbench-")
        for d in ["logs", "keys", "trusted", "archive", "data"]:
            os.makedirs(os.path.join(self.work, d))
        subprocess.run([BIN, "keygen", "--out", self.p("keys")], check=True, capture_output=True)
        shutil.copy(self.p("keys/agent.pub"), self.p("trusted/bench.pub"))
        self.port, self.rport = free_port(), free_port()
        with open(self.p("collector.toml"), "w") as f:
            f.write('[receiver]\nlisten = "127.0.0.1:%d"\narchive_dir = "%s"\ntrusted_keys_dir = "%s"\n'
                    '[telemetry]\nlisten = "127.0.0.1:%d"\n'
                    % (self.port, self.p("archive"), self.p("trusted"), self.rport))
        with open(self.p("agent.toml"), "w") as f:
            f.write('[agent]\nhost_id = "bench"\ndata_dir = "%s"\nsigning_key = "%s"\n'
                    '[[sources]]\nname = "bench"\ninclude = ["%s/*.log"]\n%s\n'
                    '[sink]\nurl = "http://127.0.0.1:%d/v1/batches"\n'
                    % (self.p("data"), self.p("keys/agent.key"), self.p("logs"), extra_source, self.port))
        self.devnull = open(os.devnull, "w")

    def p(self, rel):
        return os.path.join(self.work, rel)

    def start(self):
        self.store = subprocess.Popen([BIN, "receive", "--config", self.p("collector.toml")], stderr=self.devnull)
        deadline = time.time() + 30
        while metric(self.rport, "logveil_receiver_records_accepted") is None:
            if time.time() > deadline:
                sys.exit("store did not start")
            time.sleep(0.05)
        self.agent = subprocess.Popen([BIN, "run", "--config", self.p("agent.toml")], stderr=self.devnull)

    def accepted(self):
        return metric(self.rport, "logveil_receiver_records_accepted_total") or 0

    def wait_accepted(self, n, limit=300):
        deadline = time.time() + limit
        while self.accepted() < n:
            if time.time() > deadline:
                sys.exit("only %d of %d records arrived" % (self.accepted(), n))
            time.sleep(0.05)

    def records(self):
        out = subprocess.run([BIN, "archive", "cat", "--archive", self.p("archive")],
                             check=True, capture_output=True).stdout
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def stop(self):
        for p in (self.agent, self.store):
            p.terminate()
            p.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def idle(seconds, rate=100):
    w = World()
    files = [w.p("logs/f%04d.log" % i) for i in range(1000)]
    for f in files:
        open(f, "w").close()
    w.start()
    time.sleep(2)
    rng = random.Random(1)
    written = 0
    t_start = time.time()
    warm = t_start + 10
    cpu0 = None
    next_t = t_start
    while time.time() < t_start + seconds:
        if not rate:
            if cpu0 is None and time.time() >= warm:
                cpu0, t0 = proc_stats(w.agent.pid)[0], time.time()
            time.sleep(0.1)
            continue
        with open(files[written % 1000], "a") as f:
            f.write("line %d user=%d some payload text to look like a log line\n" % (written, rng.randrange(1000)))
        written += 1 if rate else 0
        if cpu0 is None and time.time() >= warm:
            cpu0, t0 = proc_stats(w.agent.pid)[0], time.time()
        next_t += 1.0 / rate
        time.sleep(max(0, next_t - time.time()))
    cpu1, hwm = proc_stats(w.agent.pid)
    t1 = time.time()
    now_rss = rss(w.agent.pid)
    w.wait_accepted(written)
    w.stop()
    print("1,000 files, %d lines/s for %ds: agent CPU %.2f%% of one core, RSS %.1f MB (peak %.1f MB), %d lines all arrived"
          % (rate, seconds, 100 * (cpu1 - cpu0) / (t1 - t0), now_rss / 1e6, hwm / 1e6, written))


def discovery():
    w = World()
    w.start()
    time.sleep(2)
    created = {}
    for i in range(20):
        path = w.p("logs/new%02d.log" % i)
        body = "discovery probe %02d" % i
        created[body] = time.time()
        with open(path, "w") as f:
            f.write(body + "\n")
        time.sleep(0.2)
    w.wait_accepted(20)
    lat = [parse_ts(r["timestamp"]) - created[r["body"]] for r in w.records()]
    w.stop()
    print("discovery latency (create -> read), 20 files: median %.0f ms, max %.0f ms"
          % (1000 * statistics.median(lat), 1000 * max(lat)))


def quiet_under_hot():
    w = World()
    quiet = w.p("logs/quiet.log")
    open(quiet, "w").close()
    w.start()
    time.sleep(2)
    stop = threading.Event()
    state = {"lines": 0, "end": None}

    def hot():
        line = "hot line with some padding to look like a real log line of a busy service %010d\n"
        with open(w.p("logs/hot.log"), "a", buffering=1 << 16) as f:
            i = 0
            while not stop.is_set():
                f.write(line % i)
                i += 1
        state["lines"] = i
        state["end"] = time.time()

    t = threading.Thread(target=hot)
    t.start()
    time.sleep(2)
    t_write = time.time()
    with open(quiet, "a") as f:
        f.write("the quiet line\n")
    time.sleep(8)
    stop.set()
    t.join()
    w.wait_accepted(state["lines"] + 1, limit=900)
    rec = [r for r in w.records() if r["body"] == "the quiet line"][0]
    read_at = parse_ts(rec["timestamp"])
    w.stop()
    print("quiet-file latency under a hot file (%d hot lines in 10 s): %.0f ms; read %s the hot writer stopped"
          % (state["lines"], 1000 * (read_at - t_write), "before" if read_at < state["end"] else "AFTER"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=100, help="lines/s in the 1,000-file case")
    ap.add_argument("--only-idle", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    idle(args.seconds, args.rate)
    if args.only_idle:
        return
    discovery()
    quiet_under_hot()


if __name__ == "__main__":
    main()
