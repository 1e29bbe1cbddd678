"""The report's charts as PNG files (matplotlib, Agg backend, nothing shown on screen).

    plot_pr_all(pr, path)            all classes: one panel per area range, IoU .50 / .75 / mean
    plot_pr_per_class(pr, path)      one small panel per class (area "all"), drawn as cells of one Axes
    plot_per_class_ap(pr, path)      AP@[.5:.95] per class, a sorted bar chart
    plot_confusion(confusion, path)  the [K+1, K+1] counts, rows normalised, colours on a square-root scale
    plot_tide(tide, path)            dAP per error type and the false-positive / negative split
Class names are drawn as plain text (no mathtext, so a "$" in a name stays a "$").
"""

from __future__ import annotations

import contextlib

import numpy as np

CURVES = (("0.50", "IoU 0.50"), ("0.75", "IoU 0.75"), ("mean", "IoU .50:.95"))


@contextlib.contextmanager
def _figure(*size):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False, "font.size": 8}):
        fig = plt.figure(figsize=size)
        try:
            yield fig
        finally:
            plt.close(fig)


def _save(fig, path, tight=True):
    from atss_cli.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80, bbox_inches="tight" if tight else None)


def _draw_curves(ax, curves, recall, area):
    for key, label in CURVES:
        y = np.asarray(curves[key][area], dtype=float)
        if (y < 0).all():
            continue
        ax.plot(recall, np.where(y < 0, np.nan, y), label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)


def plot_pr_all(pr: dict, path) -> None:
    with _figure(13, 3.4) as fig:
        for i, area in enumerate(("all", "small", "medium", "large")):
            ax = fig.add_subplot(1, 4, i + 1)
            _draw_curves(ax, pr["all_classes"], pr["recall"], area)
            ax.set_title(f"all classes, area {area}")
            ax.set_xlabel("recall")
            if i == 0:
                ax.set_ylabel("precision")
                ax.legend(loc="lower left")
            ax.grid(alpha=0.3)
        _save(fig, path)


def plot_pr_per_class(pr: dict, path) -> None:
    # One Axes holding a grid of unit cells, all curves in three LineCollections: real subplots (80 of
    # them on COCO) cost tens of seconds of matplotlib layout.
    from matplotlib.collections import LineCollection

    classes = pr["per_class"]
    cols = min(8, max(1, len(classes)))
    rows = max(1, -(-len(classes) // cols))
    gap_x, gap_y = 0.12, 0.32
    recall = np.asarray(pr["recall"], dtype=float)
    colours = {"0.50": "C0", "0.75": "C1", "mean": "C2"}
    with _figure(1.6 * cols, 1.5 * rows + 0.5) as fig:
        ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.7 / (1.5 * rows + 0.5)))
        lines = {key: [] for key, _ in CURVES}
        frames, grid = [], []
        for i, c in enumerate(classes):
            x0, y0 = (i % cols) * (1 + gap_x), -(i // cols) * (1 + gap_y)
            frames.append([(x0, y0), (x0 + 1, y0), (x0 + 1, y0 + 1), (x0, y0 + 1), (x0, y0)])
            grid += [[(x0 + 0.5, y0), (x0 + 0.5, y0 + 1)], [(x0, y0 + 0.5), (x0 + 1, y0 + 0.5)]]
            for key, _ in CURVES:
                y = np.asarray(c["curves"][key]["all"], dtype=float)
                keep = y >= 0
                if keep.any():
                    lines[key].append(np.column_stack([x0 + recall[keep], y0 + y[keep]]))
            ap = c["ap"]
            ax.text(x0 + 0.5, y0 + 1.04, f"{c['name']} ({ap:.3f})" if ap >= 0 else f"{c['name']} (no GT)",
                    ha="center", va="bottom", fontsize=7, clip_on=False)
        ax.add_collection(LineCollection(grid, colors="0.88", linewidths=0.5))
        ax.add_collection(LineCollection(frames, colors="0.3", linewidths=0.6))
        for key, label in CURVES:
            ax.add_collection(LineCollection(lines[key], colors=colours[key], linewidths=1.0, label=label))
        ax.set_xlim(-0.02, cols * (1 + gap_x) - gap_x + 0.02)
        ax.set_ylim(-(rows - 1) * (1 + gap_y) - 0.02, 1.2)
        ax.set_axis_off()
        fig.legend(loc="upper left", ncol=3, fontsize=7, frameon=False,
                   title="precision (up, 0 to 1) against recall (right, 0 to 1), area all", title_fontsize=7)
        _save(fig, path, tight=False)


def plot_per_class_ap(pr: dict, path) -> None:
    rows = sorted((c for c in pr["per_class"] if c["ap"] >= 0), key=lambda c: c["ap"])
    with _figure(7, max(2.0, 0.16 * len(rows) + 0.8)) as fig:
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(range(len(rows)), [c["ap"] for c in rows], color="#4c72b0")
        ax.set_yticks(range(len(rows)), [c["name"] for c in rows], fontsize=6)
        ax.set_xlabel("AP @[.50:.95]")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        _save(fig, path)


def plot_confusion(confusion: dict, path) -> None:
    from matplotlib.colors import PowerNorm

    m = np.asarray(confusion["matrix"], dtype=float)
    labels = confusion["labels"]
    n = len(labels)
    side = min(16.0, max(4.0, 0.18 * n + 2))
    with _figure(side, side) as fig:
        ax = fig.add_subplot(1, 1, 1)
        rows = m.sum(axis=1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        shown = np.where(frac > 0, frac, np.nan)
        im = ax.imshow(shown, cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0, vmax=1))
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(3, min(8, 400 // n)))
        ax.set_yticks(range(n), labels, fontsize=max(3, min(8, 400 // n)))
        ax.set_xlabel("detected as")
        ax.set_ylabel("ground truth")
        ax.set_title(f"confusion (IoU >= {confusion['iou_thresh']}, score >= {confusion['score_thresh']}), "
                     "each row as fractions")
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    if m[i, j]:
                        ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, shrink=0.6)
        _save(fig, path)


def plot_tide(tide: dict, path) -> None:
    with _figure(9, 3) as fig:
        ax = fig.add_subplot(1, 2, 1)
        names = list(tide["dap"])
        ax.bar(names, [tide["dap"][k] for k in names],
               color=["#c44e52", "#dd8452", "#8172b3", "#937860", "#55a868", "#4c72b0"])
        ax.set_ylabel("dAP (AP50 points)")
        ax.set_title(f"TIDE main errors (AP50 {tide['ap50']:.2f})")
        ax2 = fig.add_subplot(1, 2, 2)
        special = list(tide["special_dap"])
        ax2.bar(special, [tide["special_dap"][k] for k in special], color=["#c44e52", "#4c72b0"])
        ax2.set_title("false positives vs false negatives")
        for a in (ax, ax2):
            a.grid(axis="y", alpha=0.3)
        _save(fig, path)
