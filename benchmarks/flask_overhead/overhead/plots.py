"""The PNG of a run: one panel per route, latency percentiles per configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from overhead.summary import median


def plot(
    path: Path,
    samples: list[dict[str, Any]],
    summary: dict[str, dict[str, Any]],
    configs: list[str],
    routes: list[str],
    title: str,
) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
    except ImportError as exc:
        return f"no PNG: matplotlib is not installed ({exc})"
    colors = {
        "none": "#444444",
        "pulsetrace": "#1f77b4",
        "pulsetrace_keep_all": "#17becf",
        "otel": "#ff7f0e",
    }
    styles = {"pulsetrace_keep_all": "--"}
    # One panel per route: a row up to three, then two per row (four routes: 2 x 2).
    ncols = len(routes) if len(routes) <= 3 else 2
    nrows = -(-len(routes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.6 * nrows + 0.3), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(routes) :]:
        ax.set_visible(False)
    ticks = [(50, "50%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%")]
    for ax, route in zip(flat, routes):
        ymin, ymax = float("inf"), 0.0
        for c in configs:
            ss = [s for s in samples if s["config"] == c and s["route"] == route]
            if not ss:
                continue
            # Median curve over the rounds, point by point; each round faintly.
            ps = [p for p, _ in ss[0]["percentiles"]]
            xs = [1 / (1 - p / 100) for p in ps]
            for s in ss:
                ys = [v / 1000 for _, v in s["percentiles"]]
                ax.plot(
                    xs, ys, color=colors.get(c), alpha=0.18, linewidth=0.8, ls=styles.get(c, "-")
                )
            med = [median([s["percentiles"][i][1] / 1000 for s in ss]) for i in range(len(ps))]
            per = summary[route][c]
            loss = "" if per["loss_pct"] is None else f", {-per['loss_pct']:+.1f}%"
            ax.plot(
                xs,
                med,
                color=colors.get(c),
                linewidth=2,
                ls=styles.get(c, "-"),
                label=f"{c}: {per['rps']:.0f} req/s{loss}",
            )
            ymax = max(ymax, *med)
            ymin = min(ymin, *med)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1 / (1 - p / 100) for p, _ in ticks]))
        ax.set_xticklabels([label for _, label in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(2, 1e4)
        # Log latency: the body (where a small per-request cost shows) and the tail
        # (where the export work of a batching agent shows) are both readable.
        ax.set_yscale("log")
        yticks = [0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
        ax.yaxis.set_major_locator(FixedLocator(yticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(ymin / 1.3, ymax * 1.6)
        ax.set_title(f"GET {route}")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(
            fontsize=8, loc="upper left", title="median; throughput vs none", title_fontsize=7
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_title(load_desc: str, settings: dict[str, Any], vers: dict[str, str]) -> str:
    return (
        f"Flask under gunicorn (1 sync worker), {load_desc}, median of {settings['rounds']} "
        f"rounds x {settings['duration_s']} s; pulsetrace {vers['pulsetrace']}, "
        f"OpenTelemetry SDK {vers['opentelemetry-sdk']} + OTLP/gRPC"
    )
