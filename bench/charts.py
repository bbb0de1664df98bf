"""What bench/run measured, drawn: PNG files beside its JSON and Markdown results.

- `<stem>-latency.png`: for each application count of sections 1-2, the distribution
  (percentile against milliseconds) of broadcast latency and of claim -> StasisStart, native
  against the proxy, from the 101 percentiles each row keeps;
- `<stem>-throughput.png`: section 3's steps, per path: the share of calls claimed in time
  at each offered rate (a step passes at 99.9 %) and the proxy's CPU over each step divided
  by its calls (at low rates its idle work weighs on each call).

matplotlib is the benchmark's own dependency (`pip install -e '.[bench]'`), not the proxy's;
without it the charts are skipped with a line saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw"]

COLOURS = {"native": "#1f77b4", "proxy": "#d62728"}


def draw(data: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    """The charts of the sections `data` has; the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("charts skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return []
    results = data["results"]
    written = []
    if "latency" in results:
        written.append(_latency(plt, results["latency"]["rows"], directory / f"{stem}-latency.png"))
    if "throughput" in results:
        written.append(
            _throughput(plt, results["throughput"], directory / f"{stem}-throughput.png")
        )
    return written


def _latency(plt: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    counts = sorted({row["apps"] for row in rows})
    figure, axes = plt.subplots(
        len(counts), 2, figsize=(11, 3.2 * len(counts)), squeeze=False, sharey=True
    )
    measures = (
        ("broadcast_percentiles_ms", "originate -> CallBroadcast"),
        ("claim_to_start_percentiles_ms", "claim -> winner's StasisStart"),
    )
    for line, apps in zip(axes, counts, strict=True):
        for axis, (key, title) in zip(line, measures, strict=True):
            for row in (r for r in rows if r["apps"] == apps):
                values = row.get(key) or []
                if values:
                    p50 = values[50]
                    label = f"{row['path']} (p50 {p50:.2f} ms)"
                    axis.plot(values, range(len(values)), color=COLOURS[row["path"]], label=label)
            _log_x(axis)
            axis.set_title(f"{title}, {apps} application(s)", fontsize=10)
            axis.set_xlabel("ms (log scale)")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8, loc="lower right")
        line[0].set_ylabel("percentile")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _throughput(plt: Any, section: dict[str, Any], path: Path) -> Path:
    figure, (claimed, cpu) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, colour in COLOURS.items():
        steps = [s for s in section["steps"] if s["path"] == name]
        if not steps:
            continue
        rates = [s["target_rate"] for s in steps]
        shares = [100 * (s["claimed_ratio"] or 0) for s in steps]
        best = section["best"].get(name)
        claimed.plot(rates, shares, "o-", color=colour, label=f"{name} (held {best or 0:g}/s)")
        if name == "proxy":
            paid = [(s["target_rate"], s["cpu"]["proxy_cpu_s"], s["calls"]) for s in steps]
            points = [(rate, 1000 * used / n) for rate, used, n in paid if n]
            cpu.plot(*zip(*points, strict=True), "o-", color=colour, label="proxy")
    claimed.axhline(99.9, color="grey", linestyle="--", linewidth=0.8)
    claimed.set_ylim(0, 101)
    _log_x(claimed)
    claimed.set_title(f"calls claimed in time, {section['apps']} racing applications", fontsize=10)
    claimed.set_xlabel("offered calls/s (log scale)")
    claimed.set_ylabel("% of the step's calls")
    claimed.grid(True, which="both", alpha=0.3)
    claimed.legend(fontsize=8)
    _log_x(cpu)
    cpu.set_ylim(bottom=0)
    cpu.set_title("proxy CPU over the step / its calls (idle work included)", fontsize=10)
    cpu.set_xlabel("offered calls/s (log scale)")
    cpu.set_ylabel("ms of CPU")
    cpu.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _log_x(axis: Any) -> None:
    """A log-scale x axis labelled with plain numbers (2, 5, 10), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    # Between the powers of ten, 2 and 5 only (20, 50, 200...): every minor label crowds.
    axis.xaxis.set_minor_formatter(
        FuncFormatter(lambda value, _position: f"{value:g}" if f"{value:g}"[0] in "25" else "")
    )
