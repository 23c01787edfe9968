#!/usr/bin/env python3
"""Speed of `backstop simulate`: recorded requests per minute on one core.

Generates N requests (default 1,000,000) with scripts/sample-traffic.py's mix, then runs the
release binary pinned to one core (taskset) against config/backstop.yaml and reports the
wall time, CPU time and requests per minute. Target (issue #16): at least 1,000,000 per minute.

Usage: bench/simulate.py [--requests N]   (builds target/release/backstop if missing)
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    n = 1_000_000
    if "--requests" in sys.argv:
        n = int(sys.argv[sys.argv.index("--requests") + 1])
    binary = os.path.join(ROOT, "target/release/backstop")
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        traffic = os.path.join(tmp, "traffic.csv")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/sample-traffic.py"), traffic, "--requests", str(n)], check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        out = subprocess.run(["taskset", "-c", "0", binary, "simulate", "-c", os.path.join(ROOT, "config/backstop.yaml"), "--traffic", traffic],
                             check=True, capture_output=True, text=True)
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    first = out.stdout.splitlines()[0]
    print(f"{first}")
    print(f"simulate: {n} requests in {wall:.2f}s wall, {cpu:.2f}s CPU on one core: "
          f"{n / wall * 60:,.0f} requests/minute (target >= 1,000,000)")


if __name__ == "__main__":
    main()
