#!/usr/bin/env python3
"""Benchmark: a 3-node loopback cluster (release build, real QUIC with mTLS, fsync'd Raft log).

1. Commit latency: sequential configuration writes (PUT /v1/cluster/config/...) to the leader,
   p50/p99 of the HTTP round trip (which includes the commit and the apply on the leader).
2. Committed writes per second with 32 writers in parallel.
3. Leader failover: N times, kill -9 the leader and time until another node reports a new
   leader (polled every 10 ms); restart the killed node and let it catch up between trials.

    python3 bench/cluster/leader_failover.py [--trials 20] [--writes 500]
Results go to stdout and bench/out/cluster.json.
"""

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "switchyard")
BASE = 17000


def ports(i):
    return {"sip": BASE + 10 + i, "http": BASE + 20 + i, "cluster": BASE + 30 + i}


def config(i, certs):
    members = "".join(f"""
[[cluster.bootstrap]]
id = {j}
name = "node{j}"
site = "{'site-a' if j < 3 else 'site-b'}"
cluster_addr = "127.0.0.1:{ports(j)['cluster']}"
sip_addr = "127.0.0.1:{ports(j)['sip']}"
http_addr = "127.0.0.1:{ports(j)['http']}"
""" for j in (1, 2, 3))
    p = ports(i)
    return f"""
[node]
id = "node{i}"
site = "{'site-a' if i < 3 else 'site-b'}"
[sip]
listen = "127.0.0.1:{p['sip']}"
[http]
listen = "127.0.0.1:{p['http']}"
[media]
rtp_port_min = {12000 + i * 1000}
rtp_port_max = {12000 + i * 1000 + 999}
music_on_hold = "{ROOT}/deploy/media/music-on-hold.wav"
goodbye_prompt = "{ROOT}/deploy/media/goodbye.wav"
[[queue]]
name = "support"
[[did]]
number = "1000"
queue = "support"
[[agents]]
extensions = "2001-2100"
password = "pw{{ext}}"
queues = ["support"]
[cluster]
node_id = {i}
listen = "127.0.0.1:{p['cluster']}"
certs = "{certs}/node{i}"
{members}"""


def http(i, method, path, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{ports(i)['http']}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def status(i):
    try:
        return http(i, "GET", "/v1/cluster/status", timeout=1)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Cluster:
    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="sy-cluster-bench-")
        certs = os.path.join(self.work, "certs")
        subprocess.run([BIN, "ctl", "ca-create", "--dir", f"{certs}/ca"], check=True, stdout=subprocess.DEVNULL)
        for i in (1, 2, 3):
            subprocess.run([BIN, "ctl", "cert-issue", "--ca", f"{certs}/ca", "--node-id", str(i),
                            "--name", f"node{i}", "--out", f"{certs}/node{i}"], check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(self.work, f"node{i}.toml"), "w") as f:
                f.write(config(i, certs))
        self.procs = {}
        for i in (1, 2, 3):
            self.start(i)

    def start(self, i):
        log = open(os.path.join(self.work, f"node{i}.log"), "a")
        self.procs[i] = subprocess.Popen(
            [BIN, "node", "--config", os.path.join(self.work, f"node{i}.toml"),
             "--data-dir", os.path.join(self.work, f"data{i}")],
            stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="warn"))

    def leader(self, among=(1, 2, 3), timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i in among:
                s = status(i)
                if s and s.get("leader") and s["role"] == "leader":
                    return s["leader"], s["term"]
            time.sleep(0.01)
        raise RuntimeError("no leader")

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--writes", type=int, default=500)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "switchyard"], cwd=ROOT, check=True)
    c = Cluster()
    out = {}
    try:
        leader, _ = c.leader()
        # Let the leader seed the configuration before measuring.
        time.sleep(2)
        lat = []
        for n in range(args.writes):
            t = time.perf_counter()
            http(leader, "PUT", f"/v1/cluster/config/bench/seq{n}", n)
            lat.append((time.perf_counter() - t) * 1000)
        out["commit_latency_ms"] = {"p50": round(pct(lat, 50), 3), "p99": round(pct(lat, 99), 3),
                                    "samples": len(lat)}
        print("sequential write (HTTP to leader, committed and applied):", out["commit_latency_ms"], flush=True)
        total = args.writes * 4
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda n: http(leader, "PUT", f"/v1/cluster/config/bench/par{n}", n), range(total)))
        rate = total / (time.perf_counter() - t)
        out["writes_per_second_32_writers"] = round(rate)
        print(f"committed writes/s with 32 writers: {rate:.0f}", flush=True)

        times = []
        for trial in range(args.trials):
            leader, term = c.leader()
            others = [i for i in (1, 2, 3) if i != leader]
            t0 = time.perf_counter()
            c.procs[leader].kill()
            while True:
                s = [status(i) for i in others]
                if any(x and x.get("leader") not in (None, leader) and x["term"] > term for x in s):
                    break
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError("no new leader within 10 s")
                time.sleep(0.01)
            dt = time.perf_counter() - t0
            times.append(dt * 1000)
            print(f"trial {trial + 1}: leader {leader} killed, new leader after {dt * 1000:.0f} ms", flush=True)
            c.procs[leader].wait()
            c.start(leader)
            # Wait until the restarted node has caught up before the next kill.
            deadline = time.time() + 15
            while time.time() < deadline:
                s = status(leader)
                if s and s.get("leader") and s["applied_index"] >= s["commit_index"] > 0:
                    break
                time.sleep(0.05)
            time.sleep(0.5)
        out["leader_failover_ms"] = {"trials": len(times), "p50": round(pct(times, 50)),
                                     "p99": round(pct(times, 99)), "max": round(max(times)),
                                     "min": round(min(times))}
        print("leader failover:", out["leader_failover_ms"], flush=True)
    finally:
        c.stop()
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "cluster.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
