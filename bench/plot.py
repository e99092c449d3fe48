"""A PNG of one harness run: deliveries/s and p99 latency per server.

    python bench/plot.py bench/results/harness-YYYYmmdd-HHMMSS.json [out.png]

Left: deliveries/s per server for each throughput scenario (broadcast to N,
personal topics), grouped bars. Right: p99 publish-to-deliver latency per
server for each fixed-rate latency scenario (log scale). Servers that did not
run a scenario (n/a) have no bar. The harness calls :func:`plot` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["plot"]


def _bars(ax: Any, groups: list[str], servers: list[str], colors: dict[str, str],
          value: dict[tuple[str, str], float], ylabel: str, log: bool) -> None:
    servers = [v for v in servers if any((v, g) in value for g in groups)]
    width = 0.8 / max(1, len(servers))
    for k, server in enumerate(servers):
        xs, ys = [], []
        for g, group in enumerate(groups):
            v = value.get((server, group))
            if v is not None:
                xs.append(g + k * width)
                ys.append(v)
        bars = ax.bar(xs, ys, width, label=server, color=colors[server])
        for b, y in zip(bars, ys, strict=False):
            ax.annotate(f"{y:,.0f}" if y >= 100 else f"{y:.2g}",
                        (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=6, rotation=90)
    ax.set_xticks([g + width * (len(servers) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)


def plot(record: dict[str, Any], out: Path) -> Path:
    """Draw ``record`` (the harness's JSON) to ``out``; return ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = record["results"]
    servers = list(dict.fromkeys(r["server"] for r in results))
    thr = {(r["server"], r["scenario"]): r["deliveries_per_s"] for r in results
           if r.get("kind") in ("broadcast", "http-batch", "http-single", "qos1", "personal")
           and r.get("deliveries_per_s")}
    lat = {(r["server"], r["scenario"]): r["p99_ms"] for r in results
           if r.get("kind") == "latency" and r.get("p99_ms") is not None}
    thr_groups = list(dict.fromkeys(s for _, s in thr))
    lat_groups = list(dict.fromkeys(s for _, s in lat))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = {v: f"C{k % 10}" for k, v in enumerate(servers)}
    _bars(axes[0], thr_groups, servers, colors, thr, "deliveries/s (higher is better)",
          log=False)
    axes[0].set_title("Throughput at saturation, 100-byte messages")
    _bars(axes[1], lat_groups, servers, colors, lat,
          "p99 publish-to-deliver, ms (lower is better)", log=True)
    axes[1].set_title("p99 latency at a fixed delivery rate")
    axes[0].legend(fontsize=8)
    run = record.get("run", {})
    m = run.get("machine", {})
    fig.suptitle(f"{run.get('label', 'bench')} {run.get('started', '')}: server on CPU "
                 f"{run.get('server_cpu')}, load generator on {run.get('client_cpus')}; "
                 f"{m.get('cpu', '')} x{m.get('cpus', '')}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else src.with_suffix(".png")
    print(plot(json.loads(src.read_text()), out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
