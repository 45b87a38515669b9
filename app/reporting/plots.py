"""The report's figures (python -m app.report): PNG files drawn with matplotlib's Agg backend (no display).

Each function takes plain numbers, writes one PNG and returns its path, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Segment counts the PWL error curve is fitted at (each fit takes ~0.5-3 s on 2 cores)
PWL_SEGMENTS = (4, 8, 16, 32, 64)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def accuracy_vs_bits(
    series: list[tuple[str, list[tuple[int, float]], float | None]], ylabel: str, path: Path
) -> Path | None:
    """series: (label, [(bits, test value)], value of its float run or None); one line each."""
    series = [(label, sorted(p for p in points if p[1] is not None), base) for label, points, base in series]
    series = [s for s in series if s[1]]
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points, base in series:
        (line,) = axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        if base is not None:
            axes.axhline(base, linestyle="--", color=line.get_color(), linewidth=1)
    axes.set_xlabel("bits")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def pwl_error_vs_segments(measured: list[tuple[str, list[tuple[int, float]]]], ylabel: str, path: Path) -> Path:
    """Left: max error after rounding of the fitted PWL sigmoid and tanh (Q3.12 in, Q0.15 out) per segment
    count. Right: `measured` (label, [(segments, test value)]) from runs, when there are any."""
    from app.engine.lstm import GATE_FRAC, PWL_OUT_FRAC
    from app.quant.pwl import fit_pwl

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for kind in ("sigmoid", "tanh"):
        errors = [fit_pwl(kind, GATE_FRAC, PWL_OUT_FRAC, segments).max_error_lsb for segments in PWL_SEGMENTS]
        left.plot(PWL_SEGMENTS, errors, marker="o", label=kind)
    left.set(yscale="log", xlabel="PWL segments", ylabel="max error after rounding (LSB of Q0.15)")
    _segments_axis(left)
    left.legend()
    left.grid(alpha=0.3, which="both")
    for label, points in measured:
        points = sorted(p for p in points if p[1] is not None)
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    right.set(xlabel="PWL segments", ylabel=ylabel)
    _segments_axis(right)
    if measured:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no runs that differ in segments yet", ha="center", transform=right.transAxes)
    right.grid(alpha=0.3)
    return _save(figure, path)


def _segments_axis(axes) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(PWL_SEGMENTS, [str(s) for s in PWL_SEGMENTS])
    axes.minorticks_off()


def _grid(count: int, width: float = 5.5, height: float = 3.8):
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat)


def learning_curves(groups: dict[str, list[tuple[str, list[int], list[float]]]], path: Path) -> Path | None:
    """groups: {panel title: [(run label, epochs, validation values)]}: one panel per recipe."""
    groups = {title: curves for title, curves in groups.items() if any(c[1] for c in curves)}
    if not groups:
        return None
    figure, axes = _grid(len(groups))
    for ax, (title, curves) in zip(axes, sorted(groups.items())):
        for label, epochs, values in curves:
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="epochs trained", ylabel="validation ppl / WER %")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(figure, path)


def freezing_curves(
    runs: list[tuple[str, dict[str, list[tuple[int, float, float | None]]]]], path: Path
) -> Path | None:
    """runs: (label, {weight: [(epoch, frozen fraction, sign-flip fraction)]}): one panel per run."""
    if not runs:
        return None
    figure, axes = _grid(len(runs))
    for ax, (label, weights) in zip(axes, runs):
        for weight, points in sorted(weights.items()):
            (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=weight)
            flips = [(p[0], p[2]) for p in points if p[2] is not None]
            ax.plot([p[0] for p in flips], [p[1] for p in flips], linestyle="--", marker="x", color=line.get_color())
        ax.set(title=label, xlabel="epochs trained", ylabel="fraction of codes", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(figure, path)
