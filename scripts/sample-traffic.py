#!/usr/bin/env python3
"""Writes config/sample-traffic.csv: 15 minutes of recorded traffic with a partner incident,
for `backstop simulate` (README: Simulate). Deterministic (fixed seed).

  agency-a orders (POST /v1/agency-a/orders, key merchant-N): 10/s; from 05:00 to 08:00
    agency-a answers 70% 503 in ~800ms (its brownout), otherwise 200 in ~60ms.
  payments reads (GET /v1/payments/ID): 5/s, 200 in ~40ms; from 06:00 to 06:30 the
    payments provider resets 30% of calls (502 after ~20ms).

Usage: scripts/sample-traffic.py [OUT] [--requests N] (N: generate N requests at the same mix
and rates, stretched in time, for bench/simulate.py).
"""
import random
import sys

START = 1_764_500_000.0


def rows(total_seconds, rng):
    t_a, t_p = 0.0, 0.0
    while t_a < total_seconds or t_p < total_seconds:
        if t_a <= t_p:
            t = t_a
            t_a += rng.expovariate(10.0)
            brownout = 300 <= t % 900 < 480
            if brownout and rng.random() < 0.7:
                status, ms = 503, rng.gauss(800, 100)
            else:
                status, ms = 200, rng.gauss(60, 10)
            key = f"merchant-{rng.randrange(20)}"
            yield t, "POST", "orders.internal", "/v1/agency-a/orders", status, ms, key
        else:
            t = t_p
            t_p += rng.expovariate(5.0)
            resets = 360 <= t % 900 < 390
            if resets and rng.random() < 0.3:
                status, ms = 502, rng.gauss(20, 5)
            else:
                status, ms = 200, rng.gauss(40, 8)
            yield t, "GET", "payments.internal", f"/v1/payments/{rng.randrange(10**6)}", status, ms, ""


def main():
    out = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "config/sample-traffic.csv"
    requests = None
    if "--requests" in sys.argv:
        requests = int(sys.argv[sys.argv.index("--requests") + 1])
    rng = random.Random(20261130)
    seconds = 900 if requests is None else requests / 15.0
    with open(out, "w") as f:
        f.write("timestamp,method,host,path,status,latency_ms,key\n")
        for n, (t, method, host, path, status, ms, key) in enumerate(rows(seconds, rng)):
            if requests is not None and n >= requests:
                break
            f.write(f"{START + t:.3f},{method},{host},{path},{status},{max(ms, 1.0):.1f},{key}\n")


if __name__ == "__main__":
    main()
