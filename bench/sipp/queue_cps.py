#!/usr/bin/env python3
"""Benchmark: calls per second through one node's ACD queue, driven by SIPp on both ends.

For each offered rate it starts a fresh release node, registers the agents (SIPp, digest auth),
runs a SIPp agent UAS and a SIPp caller UAC, and reports achieved calls, failures, node CPU and
the node's own call set-up latency (INVITE reaching the call actor to the 200 handed to the
transaction layer, from the `call_setup_seconds` summary on /metrics; SIPp's RTT resolves only
1 ms). It also measures memory per idle registered agent and per active call.

    python3 bench/sipp/queue_cps.py                      # default rate ladder
    python3 bench/sipp/queue_cps.py --rates 200,400 --duration 20 --agents 1000

Results go to stdout and to bench/out/queue_cps.json.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = os.path.join(ROOT, "tests", "sipp")
BIN = os.path.join(ROOT, "target", "release", "switchyard")
SIP_PORT, HTTP_PORT, AGENT_PORT = 15060, 18080, 16000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(msg, flush=True)


def config(agents):
    last = 2000 + agents
    return f"""
[node]
id = "bench"
[sip]
listen = "127.0.0.1:{SIP_PORT}"
[http]
listen = "127.0.0.1:{HTTP_PORT}"
[media]
workers = 1
rtp_port_min = 20000
rtp_port_max = 39999
music_on_hold = "{ROOT}/deploy/media/music-on-hold.wav"
goodbye_prompt = "{ROOT}/deploy/media/goodbye.wav"
[registrar]
failure_limit = 1000000
[[queue]]
name = "support"
offer_timeout_secs = 15
wrap_up_secs = 0
max_wait_secs = 600
[[did]]
number = "1000"
queue = "support"
[[agents]]
extensions = "2001-{last}"
password = "pw{{ext}}"
queues = ["support"]
available_on_register = true
"""


def http_get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}{path}", timeout=5) as r:
        return r.read().decode()


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = int(fields[21]) * PAGE
    return cpu, rss


class Node:
    def __init__(self, work, agents):
        self.work = work
        path = os.path.join(work, "node.toml")
        with open(path, "w") as f:
            f.write(config(agents))
        self.log = open(os.path.join(work, "node.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "node", "--config", path, "--data-dir", os.path.join(work, "data")],
            stdout=self.log, stderr=self.log, env=dict(os.environ, RUST_LOG="warn"))
        for _ in range(100):
            try:
                http_get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("node did not become healthy; see " + self.log.name)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def sipp(work, label, scenario, *args, server=False):
    out = os.path.join(work, label)
    os.makedirs(out, exist_ok=True)
    cmd = ["sipp"] + ([] if server else [f"127.0.0.1:{SIP_PORT}"]) + [
        "-sf", os.path.join(SCENARIOS, scenario), "-i", "127.0.0.1", "-nostdin",
        "-buff_size", "4194304", "-trace_stat", "-stf", os.path.join(out, "stat.csv"),
        "-fd", "1", "-trace_err", "-error_file", os.path.join(out, "errors.log")] + list(args)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, "stderr"), "w")), out


def sipp_counts(out):
    """Successful and failed call counts from the last row of SIPp's statistics file."""
    path = os.path.join(out, "stat.csv")
    with open(path) as f:
        rows = [r.strip().split(";") for r in f if r.strip()]
    head, last = rows[0], rows[-1]
    get = lambda name: int(last[head.index(name)])
    return get("SuccessfulCall(C)"), get("FailedCall(C)")


def register(work, agents):
    csv = os.path.join(work, "agents.csv")
    with open(csv, "w") as f:
        f.write("SEQUENTIAL\n")
        for ext in range(2001, 2001 + agents):
            f.write(f"{ext};pw{ext};{AGENT_PORT};[authentication username={ext} password=pw{ext}]\n")
    proc, out = sipp(work, "register", "agent_register.xml", "-p", "0", "-m", str(agents),
                     "-r", "500", "-l", "200", "-inf", csv, "-timeout", "60s")
    if proc.wait(90) != 0:
        raise RuntimeError(f"agent registration failed, see {out}")


def setup_quantiles():
    text = http_get("/metrics")
    q = {}
    for m in re.finditer(r'^call_setup_seconds\{quantile="([0-9.]+)"\} ([0-9.e+-]+)$', text, re.M):
        q[m.group(1)] = float(m.group(2)) * 1000
    return q


def run_rate(rate, duration, agents, talk_ms):
    work = tempfile.mkdtemp(prefix=f"sy-bench-{rate}-")
    node = Node(work, agents)
    agent_proc = None
    try:
        agent_proc, _ = sipp(work, "agents", "agent_answer_wait_bye.xml", "-p", str(AGENT_PORT),
                             "-m", "100000000", server=True)
        register(work, agents)
        cpu0, _ = proc_stat(node.proc.pid)
        total = rate * duration
        t0 = time.time()
        caller, out = sipp(work, "callers", "caller.xml", "-s", "1000", "-p", "0", "-r", str(rate),
                           "-m", str(total), "-l", str(max(rate * 4, 100)), "-d", str(talk_ms),
                           "-timeout", f"{duration + 60}s")
        caller.wait(duration + 90)
        wall = time.time() - t0
        cpu1, rss = proc_stat(node.proc.pid)
        ok, failed = sipp_counts(out)
        q = setup_quantiles()
        return {
            "offered_cps": rate, "calls": total, "successful": ok, "failed": failed,
            "failure_pct": 100.0 * failed / max(total, 1),
            "achieved_cps": round(ok / max(wall - talk_ms / 1000, 1e-3), 1),
            "node_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
            "node_rss_mib": round(rss / 2**20, 1),
            "setup_p50_ms": round(q.get("0.5", float("nan")), 3),
            "setup_p99_ms": round(q.get("0.99", float("nan")), 3),
            "work_dir": work,
        }
    finally:
        if agent_proc:
            agent_proc.kill()
        node.stop()


def memory(agents, calls):
    """RSS per idle registered agent and per active (talking) call."""
    work = tempfile.mkdtemp(prefix="sy-bench-mem-")
    node = Node(work, agents)
    agent_proc = None
    try:
        time.sleep(1)
        _, base = proc_stat(node.proc.pid)
        agent_proc, _ = sipp(work, "agents", "agent_answer_wait_bye.xml", "-p", str(AGENT_PORT),
                             "-m", "100000000", server=True)
        register(work, agents)
        time.sleep(1)
        _, registered = proc_stat(node.proc.pid)
        rate = 100
        caller, _ = sipp(work, "callers", "caller.xml", "-s", "1000", "-p", "0", "-r", str(rate), "-m", str(calls),
                         "-l", str(calls), "-d", "60000", "-timeout", "120s")
        deadline = time.time() + 30
        while time.time() < deadline:
            talking = json.loads(http_get("/v1/queues/support"))
            if talking.get("answered", 0) >= calls:
                break
            time.sleep(0.5)
        time.sleep(1)
        _, active = proc_stat(node.proc.pid)
        caller.kill()
        return {
            "agents": agents, "rss_baseline_mib": round(base / 2**20, 1),
            "bytes_per_registered_agent": round((registered - base) / agents),
            "active_calls": calls, "bytes_per_active_call": round((active - registered) / calls),
        }
    finally:
        if agent_proc:
            agent_proc.kill()
        node.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="200,400,600,800,1000,1200,1400")
    ap.add_argument("--duration", type=int, default=20, help="seconds of arrivals per rate")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--talk-ms", type=int, default=500, help="talk time (0-1 s calls: 500 mean)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if shutil.which("sipp") is None:
        sys.exit("sipp not found: apt-get install -y sip-tester")
    log("building release binary...")
    subprocess.run(["cargo", "build", "--release", "-p", "switchyard"], cwd=ROOT, check=True)
    results = {"rates": []}
    for rate in [int(r) for r in args.rates.split(",")]:
        log(f"rate {rate} calls/s for {args.duration} s ...")
        r = run_rate(rate, args.duration, args.agents, args.talk_ms)
        results["rates"].append(r)
        log("  " + json.dumps({k: v for k, v in r.items() if k != "work_dir"}))
        if r["failure_pct"] >= 0.1:
            log("  failure rate >= 0.1%: stopping the ladder")
            break
    sustained = [r for r in results["rates"] if r["failure_pct"] < 0.1]
    results["max_sustained_cps"] = max((r["offered_cps"] for r in sustained), default=0)
    if not args.skip_memory:
        log("memory: 1000 idle agents, 500 active calls ...")
        results["memory"] = memory(args.agents, 500)
        log("  " + json.dumps(results["memory"]))
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "queue_cps.json"), "w") as f:
        json.dump(results, f, indent=2)
    log(f"max sustained: {results['max_sustained_cps']} calls/s (< 0.1% failed)")


if __name__ == "__main__":
    main()
