"""Tables and plots of simulated runs (matplotlib is imported only to draw)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from qwen_tools.sim.cluster import Result
from qwen_tools.sim.score import Summary

COLUMNS = (
    ("policy", "policy", "{}"),
    ("slo_attainment", "SLO", "{:.2%}"),
    ("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    ("tpot_p99_s", "TPOT p99 s", "{:.3f}"),
    ("gpu_hours", "GPU-h", "{:.2f}"),
    ("scaling_actions", "actions", "{}"),
    ("reversals", "reversals", "{}"),
    ("killed_requests", "killed", "{}"),
    ("timed_out_requests", "timed out", "{}"),
)


def _cell(fmt: str, value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return fmt.format(value)


def table(summaries: Sequence[Summary]) -> str:
    """A plain-text table, one row per summary."""
    rows = [[title for _, title, _ in COLUMNS]]
    for s in summaries:
        data = s.as_dict()
        rows.append([_cell(fmt, data[key]) for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def timeline_png(
    results: Sequence[Result],
    path: str | Path,
    title: str,
    ttft_target: float = 2.0,
    max_replicas: int | None = None,
) -> Path:
    """Arrivals, replicas (desired and ready, with each scaling action marked and the maxReplicas line),
    queue and KV-cache usage, and per-request TTFT over time, one column per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    cols = len(results)
    fig, axes = plt.subplots(4, cols, figsize=(5.5 * cols, 9), sharex=True, squeeze=False)
    for c, result in enumerate(results):
        t = [p.t / 60 for p in result.timeline]
        ax = axes[0][c]
        ax.plot(t, [p.arrivals / 10 for p in result.timeline], lw=0.8, color="tab:gray")
        ax.set_title(result.policy)
        ax.set_ylabel("arrivals / s")
        ax = axes[1][c]
        ax.step(t, [p.desired for p in result.timeline], where="post", label="desired", color="tab:blue")
        ax.step(t, [p.ready for p in result.timeline], where="post", label="ready", color="tab:green")
        for at, before, after in result.actions:
            ax.scatter(
                [at / 60], [after], marker="^" if after > before else "v", s=22, zorder=3, color="tab:blue"
            )
        if max_replicas is not None:
            ax.axhline(max_replicas, color="black", lw=0.6, ls=":", label="maxReplicas")
        top = max(
            [max_replicas or 0, *(p.desired for p in result.timeline), *(p.pods for p in result.timeline)]
        )
        # Room above the lines for the legend, in one row: it never covers them.
        ax.set_ylim(0, top * 1.45 + 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("replicas")
        ax.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
        ax = axes[2][c]
        ax.plot(t, [p.waiting for p in result.timeline], lw=0.8, color="tab:red", label="waiting")
        ax.plot(t, [p.running for p in result.timeline], lw=0.8, color="tab:purple", label="running")
        ax.set_ylabel("requests")
        ax.set_ylim(0, max([1, *(max(p.waiting, p.running) for p in result.timeline)]) * 1.45)
        ax.legend(loc="upper left", fontsize=8, ncol=2, frameon=False)
        kv = ax.twinx()
        kv.plot(t, [p.kv for p in result.timeline], lw=0.6, color="tab:olive", label="KV usage")
        kv.set_ylim(0, 1.45)
        kv.set_ylabel("KV-cache usage", fontsize=8)
        kv.legend(loc="upper right", fontsize=8, frameon=False)
        ax = axes[3][c]
        done = [r for r in result.requests if r.ttft is not None]
        ax.scatter([r.arrival / 60 for r in done], [r.ttft for r in done], s=1, alpha=0.3, color="tab:orange")
        ax.axhline(ttft_target, color="black", lw=0.6, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel("TTFT s")
        ax.set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
