"""PNG charts of bench records (``--plot DIR``): matplotlib, imported only when asked for.

loss: time and peak memory vs N per backend (log-log), one figure per device, dtype and D;
generate, data, train: a throughput bar per variant, one figure per suite and device.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def missing_dependency() -> str | None:
    """Why charts cannot be drawn here, or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'stablerep_fast[bench]'"
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _label(record: dict) -> str:
    label = record["backend"]
    if record.get("workers") is not None:
        label += f"\n{record['workers']} workers"
    if record["suite"] == "generate" and record.get("model"):
        label += f"\n{record['model']}"
    return label


def plot_loss(records: list[dict], out: Path) -> list[Path]:
    plt = _pyplot()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["device"], r["dtype"], r["D"])].append(r)
    paths = []
    for (device, dtype, d), group in sorted(groups.items()):
        fig, (ax_ms, ax_mb) = plt.subplots(1, 2, figsize=(11, 4.2))
        by_backend: dict[str, list[dict]] = defaultdict(list)
        for r in group:
            by_backend[r["backend"]].append(r)
        for backend, rows in by_backend.items():
            rows.sort(key=lambda r: r["N"])
            ns = [r["N"] for r in rows]
            ax_ms.plot(ns, [r["ms"] for r in rows], marker="o", label=backend)
            if any(r.get("peak_mb") is not None for r in rows):
                ax_mb.plot(ns, [r.get("peak_mb") for r in rows], marker="o", label=backend)
        for ax, ylabel in ((ax_ms, "forward + backward, median ms"), (ax_mb, "peak memory above baseline, MiB")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (rows)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.suptitle(f"multipos_con_loss on {device}, {dtype}, D = {d}")
        fig.tight_layout()
        path = out / f"loss_{device}_{dtype}_D{d}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_throughput(suite: str, records: list[dict], out: Path) -> list[Path]:
    plt = _pyplot()
    by_device: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_device[r["device"]].append(r)
    paths = []
    for device, rows in sorted(by_device.items()):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.2))
        labels = [_label(r) for r in rows]
        bars = ax.bar(range(len(rows)), [r["throughput"] for r in rows], color="tab:blue")
        ax.bar_label(bars, fmt="%.3g")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("images/s")
        ax.set_title(f"{suite} on {device}")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"{suite}_{device}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_records(records: list[dict], out: str | Path) -> list[Path]:
    """Write the charts of ``records`` (measured ones) into ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("ms") is not None and not r.get("skipped"):
            by_suite[r["suite"]].append(r)
    paths = []
    for suite, rows in by_suite.items():
        if suite == "loss":
            paths += plot_loss(rows, out)
        else:
            rows = [r for r in rows if r.get("throughput") is not None]
            if rows:
                paths += plot_throughput(suite, rows, out)
    return paths
