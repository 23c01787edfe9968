#!/usr/bin/env python3
"""Worker model: `--worker-model work-stealing` (tokio's multi-thread runtime) against
`--worker-model per-core` (one current-thread runtime per worker, all accepting from one
socket), both with --workers 2, interleaved rounds, medians.

On a 2-core machine nothing can be kept apart: the proxy's two workers, the backend (nginx, one
worker) and wrk (2 threads) share both cores. The numbers compare the two models under the same
conditions; they are not the proxy's absolute capacity (bench/run.py measures that on one core).

Usage: bench/workers.py [--rounds 3] [--seconds 8] [--connections 64]
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: tools, ports, nginx config, CPU accounting)

ROOT = bench.ROOT
CORES = "0,1"


def wrk(port, connections, seconds):
    out = subprocess.run(["taskset", "-c", CORES, bench.which("wrk"), "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/bench"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    sys.exit(f"bench: no rate in wrk output:\n{out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    bench.ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="backstop-workers-")
    backend_port = bench.free_port()
    backend = bench.start([bench.which("nginx"), "-c", bench.nginx_conf(tmp, "backend", backend_port,
                           f'server {{ listen 127.0.0.1:{backend_port} backlog=4096; location / {{ return 200 "ok\\n"; }} }}')], CORES)
    bench.wait_port(backend_port)
    results = {m: {"rps": [], "cpu": []} for m in ["work-stealing", "per-core"]}
    try:
        for r in range(args.rounds):
            for model in results:
                port, admin = bench.free_port(), bench.free_port()
                cfg = os.path.join(tmp, f"{model}.yaml")
                open(cfg, "w").write(f"""listen: 127.0.0.1:{port}
admin: {{ listen: "127.0.0.1:{admin}" }}
upstreams:
  be: {{ endpoints: [ {{ address: "127.0.0.1:{backend_port}" }} ] }}
routes:
  - {{ name: bench, upstream: be, timeout: 5s }}
""")
                proc = bench.start([os.path.join(ROOT, "target/release/backstop"), "run", "-c", cfg, "--workers", "2", "--worker-model", model],
                                   CORES, env={**os.environ, "RUST_LOG": "warn"})
                bench.wait_port(port)
                wrk(port, args.connections, 2)  # warm-up
                c0 = bench.cpu_seconds(proc.pid)
                rps = wrk(port, args.connections, args.seconds)
                c1 = bench.cpu_seconds(proc.pid)
                proc.terminate()
                proc.wait(timeout=30)
                cpu = (c1 - c0) * 1000 * 1000 / max(rps * args.seconds, 1)
                results[model]["rps"].append(rps)
                results[model]["cpu"].append(cpu)
                print(f"round {r + 1} {model:13s} rps {rps:9.0f}  cpu/1k {cpu:6.1f} ms", flush=True)
    finally:
        backend.terminate()
    print("\n| worker model (--workers 2) | rps (median) | CPU ms per 1k requests |\n|---|---|---|")
    for model, res in results.items():
        print(f"| {model} | {statistics.median(res['rps']):.0f} | {statistics.median(res['cpu']):.1f} |")


if __name__ == "__main__":
    main()
