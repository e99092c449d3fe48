"""Issue 2's fan-out benchmark: Tidings vs a minimal `websockets` server, one run.

    python bench/fanout.py                 # 1,000 and 5,000 subscribers, 3 rounds
    python bench/fanout.py --quick         # one round, shorter windows
    python bench/fanout.py --sizes 1000 --rounds 1

N subscribers (1,000 and 5,000) on one topic over WebSocket; 100-byte
messages published through Tidings' HTTP API (``POST /v1/publish``) as fast
as the server delivers them; the same load against a minimal `websockets` +
uvloop broadcast server (bench/refservers/ws_broadcast.py), started in the
same run. Servers on CPU 0, the load generator on the other CPUs. Rounds
alternate between the two servers and each keeps its best round, because
other processes on these machines disturb single runs.

Prints deliveries/s and publish-to-deliver latency (p50/p99, at saturation,
so it includes the bounded publishing window) for each, and Tidings /
reference on deliveries/s. Target (issue 2): at least 0.6. The full harness
with more servers and scenarios is bench/harness.py.
"""

from __future__ import annotations

import argparse
import atexit
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

__all__ = ["main"]

TARGET_RATIO = 0.6


def summary(record: dict[str, Any]) -> str:
    by = {(r["server"], r["scenario"]): r for r in record["results"]}
    sizes = list(dict.fromkeys(r["scenario"] for r in record["results"]))
    lines = [f"{'subscribers':<14}{'server':<12}{'deliveries/s':>14}{'p50 ms':>10}"
             f"{'p99 ms':>10}{'server CPU':>12}"]
    for scen in sizes:
        for server in ("tidings", "websockets"):
            r = by.get((server, scen), {})
            if "deliveries_per_s" not in r:
                lines.append(f"{scen:<14}{server:<12}{r.get('error', r.get('na', '-'))}")
                continue
            lines.append(f"{scen:<14}{server:<12}{r['deliveries_per_s']:>14,.0f}"
                         f"{r.get('p50_ms') or 0:>10.1f}{r.get('p99_ms') or 0:>10.1f}"
                         f"{r.get('server_cpu_pct', 0):>11.0f}%")
    lines.append("")
    for scen in sizes:
        a = by.get(("tidings", scen), {}).get("deliveries_per_s")
        b = by.get(("websockets", scen), {}).get("deliveries_per_s")
        if a and b:
            ratio = a / b
            verdict = "meets" if ratio >= TARGET_RATIO else "below"
            lines.append(f"{scen}: Tidings / websockets = {ratio:.2f} deliveries/s "
                         f"({verdict} the {TARGET_RATIO} target)")
        else:
            lines.append(f"{scen}: no ratio (a run failed)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tidings vs websockets broadcast (issue 2).")
    p.add_argument("--sizes", default="1000,5000", help="subscriber counts (1000,5000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept (3)")
    p.add_argument("--quick", action="store_true", help="one round, 1.5 s windows")
    p.add_argument("--measure", type=float, default=3.0, help="seconds measured (3.0)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--tidings-src", help="folder holding the tidings package to run")
    a = p.parse_args(argv)
    args = ["--servers", "tidings,websockets", "--scenarios", "broadcast",
            "--sizes", a.sizes, "--repeat", str(1 if a.quick else a.rounds),
            "--measure", str(1.5 if a.quick else a.measure)]
    if a.quick:
        args += ["--warmup", "0.5"]
    if a.no_plot:
        args.append("--no-plot")
    if a.tidings_src:
        args += ["--tidings-src", a.tidings_src]
    o = harness.parse(args)
    o.label = "fanout"
    atexit.register(harness.stop_all)
    signal.signal(signal.SIGTERM, harness.on_terminate)
    import uvloop

    try:
        record = uvloop.run(harness.run(o))
    finally:
        harness.stop_all()
    record["run"]["command"] = "python bench/fanout.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    harness.finish(record, o)
    print()
    print(summary(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
