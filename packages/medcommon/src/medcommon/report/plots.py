"""Matplotlib figures for benchmark reports (Agg backend, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medcommon.fs import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def plot_bars(
    values: Mapping[str, Mapping[str, tuple[float, float]]],
    path: str | Path,
    title: str,
    ylabel: str,
) -> Path:
    """Grouped bars with error bars: ``values[group][series] = (mean, std)``."""
    plt = _pyplot()
    groups = list(values)
    series: list[str] = []
    for g in groups:
        series += [s for s in values[g] if s not in series]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(series)) / 3), 4))
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        means = [values[g].get(s, (np.nan, 0))[0] for g in groups]
        stds = [values[g].get(s, (np.nan, 0))[1] for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=s)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_differences(
    diffs: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    xlabel: str,
) -> Path:
    """Paired differences, one row per comparison: every run as a dot, mean ± std as a bar.

    A zero line marks "no difference", so a reader sees at a glance which comparisons are
    consistently on one side; bar charts of the two means hide that.
    """
    plt = _pyplot()
    names = list(diffs)
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(names) + 1.3))
    ax.axvline(0.0, color="0.4", lw=1)
    rng = np.random.default_rng(0)  # fixed vertical jitter: the figure is reproducible
    for i, name in enumerate(names):
        d = np.asarray(diffs[name], dtype=float)
        d = d[np.isfinite(d)]
        if d.size == 0:
            continue
        y = len(names) - 1 - i
        ax.scatter(d, y + rng.uniform(-0.15, 0.15, d.size), s=14, alpha=0.6, color="C0")
        std = d.std(ddof=1) if d.size > 1 else 0.0
        ax.errorbar(d.mean(), y, xerr=std, fmt="D", color="C3", capsize=4, ms=6)
    ax.set_yticks(range(len(names)), names[::-1])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_intervals(
    groups: Mapping[str, Mapping[str, tuple[float, float, float]]],
    path: str | Path,
    title: str,
    xlabel: str,
) -> Path:
    """Point estimates with intervals, ``groups[row][series] = (estimate, lo, hi)``.

    One row per group (e.g. a benchmark setting), one marker per series within it,
    and a zero line: a forest plot of paired differences, where an interval that
    crosses 0 is visibly a tie.
    """
    plt = _pyplot()
    rows = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) * max(1, len(series)) ** 0.5 + 1.5))
    ax.axvline(0.0, color="0.4", lw=1)
    offsets = np.linspace(-0.25, 0.25, len(series)) if len(series) > 1 else [0.0]
    for j, name in enumerate(series):
        ys, est, err = [], [], [[], []]
        for i, row in enumerate(rows):
            if name not in groups[row]:
                continue
            e, lo, hi = groups[row][name]
            ys.append(len(rows) - 1 - i + offsets[j])
            est.append(e)
            err[0].append(e - lo)
            err[1].append(hi - e)
        ax.errorbar(est, ys, xerr=err, fmt="o", capsize=3, ms=4, label=name, color=f"C{j}")
    ax.set_yticks(range(len(rows)), rows[::-1], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _labelled(fig, ax, path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Title, axis labels, legend and a light grid on ``ax``; ``fig`` saved to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_lines(
    xs: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One line per series over shared x values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, y in ys.items():
        ax.plot(xs, y, marker="o", label=name)
    return _labelled(fig, ax, path, title, xlabel, ylabel)


def plot_tradeoff(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    points: Mapping[str, tuple[float, float]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    marked: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """A trade-off figure: one curve per series through ``(xs, ys)`` in the given order
    (e.g. increasing dose), reference models as labelled stars at ``points``, and each
    series' chosen point (``marked``) circled in its colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = {}
    for name, (xs, ys) in curves.items():
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=name)
        colours[name] = line.get_color()
    for name, (x, y) in (marked or {}).items():
        ax.plot([x], [y], marker="o", markersize=12, fillstyle="none",
                color=colours.get(name, "k"), label=f"{name}: chosen")  # fmt: skip
    for name, (x, y) in points.items():
        ax.plot([x], [y], marker="*", markersize=14, linestyle="none", label=name)
    return _labelled(fig, ax, path, title, xlabel, ylabel)


def plot_heatmap(
    matrix: np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """A matrix with its values printed in the cells (e.g. the stage x site Dice matrix)."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1 + 0.9 * m.shape[1], 1 + 0.6 * m.shape[0]))
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
    ax.set_xticks(range(m.shape[1]), col_labels, rotation=30)
    ax.set_yticks(range(m.shape[0]), row_labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                color="w" if m[i, j] < (vmin + vmax) / 2 else "k",
                fontsize=8,
            )
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_heatmap_panels(
    matrices: Mapping[str, np.ndarray | Sequence[Sequence[float]]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """Equal-shaped matrices side by side, one titled panel each, values printed in the cells.

    ``matrices[name]`` is ``(len(row_labels), len(col_labels))``; all panels share one colour
    scale (``vmin``..``vmax``) so a cell reads the same in every panel (e.g. a method's
    stage x site Dice matrix next to its baseline's).
    """
    plt = _pyplot()
    mats = {k: np.asarray(v, dtype=float) for k, v in matrices.items()}
    if not mats:
        raise ValueError("plot_heatmap_panels needs at least one matrix")
    shape = (len(row_labels), len(col_labels))
    for name, m in mats.items():
        if m.shape != shape:
            raise ValueError(f"matrix {name!r} has shape {m.shape}, labels say {shape}")
    n = len(mats)
    fig, axes = plt.subplots(
        1, n, figsize=(0.9 * shape[1] * n + 2.5, 0.6 * shape[0] + 1.6), squeeze=False
    )
    for k, (ax, (name, m)) in enumerate(zip(axes[0], mats.items())):
        im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(shape[1]), col_labels, rotation=30)
        ax.set_yticks(range(shape[0]), row_labels if k == 0 else [""] * shape[0])
        for i in range(shape[0]):
            for j in range(shape[1]):
                color = "w" if m[i, j] < (vmin + vmax) / 2 else "k"
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color=color, fontsize=8)
        ax.set_title(name)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.046 / n * 2)
    return _save(fig, path)


def plot_image_grid(
    images: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """A grid of grayscale images, ``images[row][col]`` each ``(y, x)``."""
    plt = _pyplot()
    rows = len(images)
    cols = max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(images[i]):
                ax.imshow(np.asarray(images[i][j]), cmap="gray")
            if j == 0:
                ax.text(
                    -0.08,
                    0.5,
                    row_labels[i],
                    transform=ax.transAxes,
                    ha="right",
                    va="center",
                    fontsize=8,
                )
            if col_labels and i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_runs(
    values: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    xlabel: str,
    highlight: Sequence[str] = (),
) -> Path:
    """A metric per method, one row each: every run as a dot, mean ± sample std as a bar.

    ``values[method]`` holds one number per run (e.g. per seed x fold). Unlike a bar
    chart, the axis is not forced to start at 0, so differences of a few hundredths
    stay visible, and the dots show how many runs there are and how they spread.
    Methods in ``highlight`` are drawn in a second colour and their mean is printed.
    """
    plt = _pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.3))
    rng = np.random.default_rng(0)  # fixed vertical jitter: the figure is reproducible
    for i, name in enumerate(names):
        v = np.asarray(values[name], dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        y = len(names) - 1 - i
        color = "C3" if name in highlight else "C0"
        ax.scatter(v, y + rng.uniform(-0.15, 0.15, v.size), s=14, alpha=0.5, color=color)
        std = v.std(ddof=1) if v.size > 1 else 0.0
        ax.errorbar(v.mean(), y, xerr=std, fmt="D", color="k", capsize=4, ms=6)
        ax.annotate(
            f"{v.mean():.3f}",
            (v.mean(), y),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            fontweight="bold" if name in highlight else "normal",
        )
    ax.set_yticks(range(len(names)), names[::-1])
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
