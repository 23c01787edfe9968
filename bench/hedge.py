#!/usr/bin/env python3
"""Hedged requests against a backend with a slow tail: p50/p99/p99.9 with and without hedging.

Two backend endpoints (one Python asyncio process each, on core 1) answer at once, except
that a share of requests (default 1%) waits `--tail-ms` (default 100ms) first, independently
per request, like a partner whose instances pause now and then. backstop (one worker, core 0)
fronts both with p2c_ewma. oha sends an open-loop GET load at a fixed rate with latency
correction, on core 1. Targets, interleaved per round:
  - backstop without hedging
  - backstop with `hedge: { after: 10ms, budget: 5% }`
  - backstop with `hedge: { after: p95, budget: 5% }`
Reported per target: median over rounds of p50, p99, p99.9, and from backstop's metrics the
hedges sent and won, with the extra load on the backends (hedges / requests).

Usage: bench/hedge.py [--rounds 3] [--seconds 20] [--rate 500] [--tail 0.01] [--tail-ms 100]
Only 127.0.0.1 is used; every run is bounded in time.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, PROXY_CORE, LOAD_CORE, ensure_tools, which, free_port, wait_port, start, stop  # noqa: E402

BACKEND = r'''
import asyncio, random, sys
port, tail, tail_ms = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
BODY = b"ok\n"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\n" + BODY
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if random.random() < tail:
                await asyncio.sleep(tail_ms / 1000)
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
'''

CONFIG = """listen: 127.0.0.1:{port}
admin: {{ listen: "127.0.0.1:{admin}" }}
upstreams:
  be:
    load_balancing: p2c_ewma
    endpoints: [ {{ address: "127.0.0.1:{b1}" }}, {{ address: "127.0.0.1:{b2}" }} ]
routes:
  - name: bench
    upstream: be
    timeout: 5s
{hedge}"""

TARGETS = {
    "no hedging": "",
    "hedge after 10ms": "    hedge: {{ after: 10ms, max_extra: 1, budget: 5% }}\n",
    "hedge after p95": "    hedge: {{ after: p95, max_extra: 1, budget: 5% }}\n",
}


def oha(port, seconds, rate, connections):
    out = subprocess.run(["taskset", "-c", LOAD_CORE, which("oha"), "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
                          "-q", str(rate), "--latency-correction", "-c", str(connections), f"http://127.0.0.1:{port}/quote"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    total = sum(data.get("statusCodeDistribution", {}).values())
    return pct["p50"] * 1000, pct["p99"] * 1000, pct["p99.9"] * 1000, total


def hedges(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("backstop_hedges_total{"):
            result = line.split('result="')[1].split('"')[0]
            counts[result] = float(line.rsplit(" ", 1)[1])
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tail", type=float, default=0.01)
    ap.add_argument("--tail-ms", type=float, default=100)
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="backstop-hedge-")
    script = os.path.join(tmp, "backend.py")
    open(script, "w").write(BACKEND)
    b1, b2 = free_port(), free_port()
    backends = [start([sys.executable, script, str(p), str(args.tail), str(args.tail_ms)], LOAD_CORE) for p in (b1, b2)]
    for p in (b1, b2):
        wait_port(p)
    results = {name: {"p50": [], "p99": [], "p999": [], "sent": [], "won": [], "extra": []} for name in TARGETS}
    env = {**os.environ, "RUST_LOG": "warn"}
    try:
        for r in range(args.rounds):
            for name, hedge in TARGETS.items():
                port, admin = free_port(), free_port()
                cfg = os.path.join(tmp, "backstop.yaml")
                open(cfg, "w").write(CONFIG.format(port=port, admin=admin, b1=b1, b2=b2, hedge=hedge.format()))
                proc = start([os.path.join(ROOT, "target/release/backstop"), "run", "-c", cfg, "--workers", "1"], PROXY_CORE, env)
                wait_port(port)
                time.sleep(0.3)
                oha(port, 3, args.rate, args.connections)  # warm-up: pools, the p95 window
                before = hedges(admin)
                p50, p99, p999, total = oha(port, args.seconds, args.rate, args.connections)
                after = hedges(admin)
                stop(proc)
                sent = after.get("sent", 0) - before.get("sent", 0)
                won = after.get("won", 0) - before.get("won", 0)
                res = results[name]
                res["p50"].append(p50)
                res["p99"].append(p99)
                res["p999"].append(p999)
                res["sent"].append(sent)
                res["won"].append(won)
                res["extra"].append(100.0 * sent / max(total, 1))
                print(f"round {r + 1} {name:17s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  p99.9 {p999:.3f} ms  hedges {sent:.0f} (won {won:.0f}, {res['extra'][-1]:.2f}% extra) of {total}", flush=True)
    finally:
        for b in backends:
            stop(b)
    print()
    print(f"Medians of {args.rounds} interleaved rounds; oha {args.rate} req/s open loop for {args.seconds}s, {args.connections} connections;"
          f" backend: 2 endpoints, {args.tail * 100:g}% of requests wait {args.tail_ms:g}ms.")
    print()
    print("| target | p50 ms | p99 ms | p99.9 ms | hedges sent | won | extra load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, res in results.items():
        m = {k: statistics.median(v) for k, v in res.items()}
        print(f"| {name} | {m['p50']:.3f} | {m['p99']:.3f} | {m['p999']:.3f} | {m['sent']:.0f} | {m['won']:.0f} | {m['extra']:.2f}% |")


if __name__ == "__main__":
    main()
