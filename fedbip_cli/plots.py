"""Plots people would rather look at than read (matplotlib is optional: without it, no PNG)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fedbip_cli.core.files.atomic import atomic_open


def _pyplot():
    try:
        # optional: matplotlib, the [plots] extra (~1 s to import)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def preload() -> None:
    """Import matplotlib on a background thread, so its import overlaps the Gram pass (the main
    thread spends it in BLAS and reads, which release the GIL)."""

    threading.Thread(target=_pyplot, name="fedbip-preload-matplotlib", daemon=True).start()


def similarity_heatmap(matrix: np.ndarray, clients: Sequence[str], path: Path, title: str) -> Path | None:
    """Cosine matrix as a diverging heatmap with the values written in the cells (if few)."""
    plt = _pyplot()
    if plt is None:
        return None
    k = len(clients)
    side = min(max(4.5, 1.5 + 0.55 * k), 14.0)  # beyond ~24 clients, shrink the labels rather than grow the canvas
    font = max(3.0, min(8.0, 8.0 * 24 / max(k, 1)))
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=110)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(k), clients, rotation=60, ha="right", fontsize=font)
    ax.set_yticks(range(k), clients, fontsize=font)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(matrix[i, j]) > 0.6 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def accuracy_curves(curves: Mapping[str, Sequence[float]], path: Path, title: str,
                    ylabel: str = "mean accuracy") -> Path | None:
    """One line per strategy over rounds."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, ys in curves.items():  # x: the round after whose aggregation it was measured, as the tables count
        ax.plot(range(len(ys)), ys, marker="o", label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)  # rounds are whole numbers: no ticks at 1.25, 1.5, ...
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
