#!/usr/bin/env python3
"""Benchmark backstop against direct-to-backend, nginx and haproxy, interleaved, on loopback.

Layout on a 2-core machine: each proxy runs one worker pinned to core 0; the backend (nginx,
one worker, a small static answer) and the load generators share core 1. Every target gets
the same backend, the same load and the same number of rounds, interleaved so drift in the
machine hits all alike. Per round and target:
  - closed loop: wrk, 1 thread, C connections, D seconds -> max requests/s
  - open loop: oha at a fixed rate with latency correction -> p50/p99
  - CPU of the proxy process over the closed-loop run -> CPU ms per 1000 requests
  - variants (--variant NAME=FILE) run backstop with other configs in the same rounds; a
    template that names {redis} gets a redis-server on core 1
  - RSS of the proxy process after the load
The medians over rounds are printed as a table with ratios to nginx.

Usage: bench/run.py [--rounds 3] [--seconds 8] [--rate 4000] [--connections 32] [--variant NAME=FILE]...
Installs wrk, nginx, haproxy (apt-get) and oha (cargo install) when missing.
Only 127.0.0.1 is ever used; every run is bounded in time.
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_CORE, LOAD_CORE = "0", "1"


def ensure_tools():
    missing = [p for p, c in [("wrk", "wrk"), ("nginx", "nginx"), ("haproxy", "haproxy"), ("redis-server", "redis-server")] if not shutil.which(c) and not os.path.exists(f"/usr/sbin/{c}")]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("oha") and not os.path.exists(os.path.expanduser("~/.cargo/bin/oha")):
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)


def which(cmd):
    for p in [shutil.which(cmd), f"/usr/sbin/{cmd}", os.path.expanduser(f"~/.cargo/bin/{cmd}")]:
        if p and os.path.exists(p):
            return p
    sys.exit(f"bench: {cmd} not found")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on {port}")


def cpu_seconds(pid):
    # utime + stime of the process and its threads, in clock ticks.
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(pid, name):
    """nginx/haproxy fork workers: measure the child doing the work, else the process itself."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        if out:
            return int(out[0])
    except OSError:
        pass
    return pid


def start(cmd, core, env=None):
    return subprocess.Popen(["taskset", "-c", core] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except Exception:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:
            pass


def nginx_conf(tmp, name, port, body):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  {body}
}}
""")
    return path


def run_wrk(port, seconds, connections, script=None):
    extra = ["-s", script, "--latency"] if script else []
    out = subprocess.run(["taskset", "-c", LOAD_CORE, which("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s"] + extra + [f"http://127.0.0.1:{port}/bench"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        latency[pct] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, total, int(non2xx.group(1)) if non2xx else 0, latency


def wrk_latency(latency):
    """wrk's own closed-loop p50/p99 in ms (used when a --wrk-script replaces oha)."""
    return latency.get("50", 0.0), latency.get("99", 0.0)


def run_oha(port, seconds, rate, connections):
    out = subprocess.run(["taskset", "-c", LOAD_CORE, which("oha"), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate),
                          "--latency-correction", "-c", str(connections), f"http://127.0.0.1:{port}/bench"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return pct["p50"] * 1000, pct["p99"] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FILE",
                    help="an extra backstop target with this config template ({port}, {admin}, {backend} are filled in); repeatable")
    ap.add_argument("--only", default=None, help="comma-separated targets to run")
    ap.add_argument("--wrk-script", default=None,
                    help="a wrk Lua script for every target (e.g. bench/keyed-post.lua); p50/p99 then come from wrk's closed loop, not oha")
    ap.add_argument("--json-backend", action="store_true",
                    help='the backend answers {"code":"OK"} as application/json (for outcome rules)')
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="backstop-bench-")
    backend_port = free_port()
    redis_port, redis = free_port(), None
    if any("{redis}" in open(v.split("=", 1)[1]).read() for v in args.variant):
        redis = start([which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], LOAD_CORE)
        wait_port(redis_port)
    answer = 'default_type application/json; return 200 \'{"code":"OK"}\';' if args.json_backend else 'return 200 "ok\\n";'
    backend = start([which("nginx"), "-c", nginx_conf(tmp, "backend", backend_port,
                     f'server {{ listen 127.0.0.1:{backend_port} backlog=4096; location / {{ {answer} }} }}')], LOAD_CORE)
    wait_port(backend_port)

    targets = {}
    p = free_port()
    targets["nginx"] = ([which("nginx"), "-c", nginx_conf(tmp, "proxy", p, f"""
  upstream be {{ server 127.0.0.1:{backend_port}; keepalive 256; }}
  server {{ listen 127.0.0.1:{p} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")], p)
    p = free_port()
    hcfg = os.path.join(tmp, "haproxy.cfg")
    open(hcfg, "w").write(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{p}
  default_backend be
backend be
  server s1 127.0.0.1:{backend_port}
""")
    targets["haproxy"] = ([which("haproxy"), "-f", hcfg, "-db"], p)
    passthrough = """listen: 127.0.0.1:{port}
admin: {{ listen: "127.0.0.1:{admin}" }}
upstreams:
  be: {{ endpoints: [ {{ address: "127.0.0.1:{backend}" }} ] }}
routes:
  - {{ name: bench, upstream: be, timeout: 5s }}
"""
    variants = [("backstop", passthrough)] + [(v.split("=", 1)[0], open(v.split("=", 1)[1]).read()) for v in args.variant]
    for vname, template in variants:
        p, admin = free_port(), free_port()
        bcfg = os.path.join(tmp, f"{vname}.yaml")
        open(bcfg, "w").write(template.format(port=p, admin=admin, backend=backend_port, redis=redis_port))
        targets[vname] = ([os.path.join(ROOT, "target/release/backstop"), "run", "-c", bcfg, "--workers", "1"], p)
    names = ["direct"] + list(targets)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]

    results = {n: {"rps": [], "cpu": [], "rss": [], "p50": [], "p99": [], "errors": 0} for n in names}
    env = {**os.environ, "RUST_LOG": "warn"}
    try:
        for r in range(args.rounds):
            for name in names:
                if name == "direct":
                    port, proc, pid = backend_port, None, worker_pid(backend.pid, "backend")
                else:
                    cmd, port = targets[name]
                    proc = start(cmd, PROXY_CORE, env)
                    wait_port(port)
                    time.sleep(0.3)
                    pid = worker_pid(proc.pid, name)
                run_wrk(port, 2, args.connections, args.wrk_script)  # warm-up: pools, caches
                c0 = cpu_seconds(pid)
                rps, total, errors, latency = run_wrk(port, args.seconds, args.connections, args.wrk_script)
                c1 = cpu_seconds(pid)
                if args.wrk_script:
                    p50, p99 = wrk_latency(latency)
                else:
                    p50, p99 = run_oha(port, args.seconds, args.rate, args.connections)
                res = results[name]
                res["rps"].append(rps)
                res["cpu"].append((c1 - c0) * 1000 * 1000 / max(total, 1))
                res["rss"].append(rss_mib(pid))
                res["p50"].append(p50)
                res["p99"].append(p99)
                res["errors"] += errors
                print(f"round {r + 1} {name:9s} rps {rps:9.0f}  cpu/1k {res['cpu'][-1]:6.1f} ms  p50 {p50:.3f} ms  p99 {p99:.3f} ms  rss {res['rss'][-1]:.1f} MiB  non-2xx {errors}", flush=True)
                if proc:
                    stop(proc)
    finally:
        stop(backend)
        if redis:
            stop(redis)

    med = {n: {k: statistics.median(v) for k, v in res.items() if k != "errors"} for n, res in results.items()}
    ref = med.get("nginx")
    print()
    if args.wrk_script:
        print(f"Medians of {args.rounds} interleaved rounds; closed loop wrk -t1 -c{args.connections} {args.seconds}s -s {args.wrk_script}; p50/p99 from wrk's closed loop.")
    else:
        print(f"Medians of {args.rounds} interleaved rounds; closed loop wrk -t1 -c{args.connections} {args.seconds}s; open loop oha {args.rate} rps {args.seconds}s.")
    print("CPU is the proxy process's (for direct: the backend's) CPU per 1000 requests in the closed-loop run.")
    print()
    if "backstop" in med:
        print("Variants vs pass-through backstop: " + ", ".join(
            f"{n} {med[n]['rps'] / med['backstop']['rps']:.3f}x rps, {med[n]['cpu'] / med['backstop']['cpu']:.3f}x CPU"
            for n in names if n not in ("direct", "nginx", "haproxy", "backstop")) or "none")
        print()
    print("| target | max rps | vs nginx | CPU ms / 1000 req | vs nginx | p50 ms @ rate | p99 ms @ rate | vs nginx p99 | RSS MiB | non-2xx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        m = med[n]
        ratio = lambda k: f"{m[k] / ref[k]:.2f}x" if ref and ref[k] else "-"
        print(f"| {n} | {m['rps']:.0f} | {ratio('rps')} | {m['cpu']:.1f} | {ratio('cpu')} | {m['p50']:.3f} | {m['p99']:.3f} | {ratio('p99')} | {m['rss']:.1f} | {results[n]['errors']} |")


if __name__ == "__main__":
    main()
