"""Figures of an architecture search: validation log loss over the search, and AUC against cost with its Pareto front.

History records are dicts with "index" (evaluation order), "generation" (-1 for the initial population),
"val_logloss", "val_auc" and "mflops" (per sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display needed, and none touched on a headless runner

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def pareto_front(mflops: Sequence[float], auc: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (MFLOPs <= and AUC >=, one strictly), sorted by MFLOPs.

    Equal points do not dominate each other, so duplicates on the front are all kept.
    """
    cost = np.asarray(mflops, dtype=np.float64)
    quality = np.asarray(auc, dtype=np.float64)
    if cost.shape != quality.shape or cost.ndim != 1:
        raise ValueError(f"mflops and auc must be 1-d and of equal length: {cost.shape} vs {quality.shape}")
    if not (np.isfinite(cost).all() and np.isfinite(quality).all()):
        raise ValueError("mflops and auc must be finite")
    # cheapest first, best AUC first among equal cost: a point is on the front iff it beats every cheaper AUC
    front: list[int] = []
    for i in np.lexsort((-quality, cost)).tolist():
        last = front[-1] if front else None
        beats_cheaper = last is None or quality[i] > quality[last]
        if beats_cheaper or (quality[i] == quality[last] and cost[i] == cost[last]):
            front.append(i)
    return front


def plot_search_trajectory(history: Sequence[dict], path: Path) -> Path:
    """Validation log loss of each evaluated architecture in evaluation order, with the best so far."""
    index, generation, logloss = _columns(history, "index", "generation", "val_logloss")
    order = np.argsort(index, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        points = ax.scatter(index, logloss, c=generation, cmap="viridis", s=18, alpha=0.8)
        fig.colorbar(points, ax=ax, label="generation (-1 = initial population)")
        ax.plot(
            index[order],
            np.minimum.accumulate(logloss[order]),
            color="tab:red",
            drawstyle="steps-post",
            label="best so far",
        )
        ax.set_xlabel("evaluation index")
        ax.set_ylabel("validation log loss")
        ax.set_title("Architecture search: validation log loss")
        ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_auc_vs_mflops(history: Sequence[dict], path: Path) -> Path:
    """Validation AUC against MFLOPs per sample for every evaluated architecture, with the Pareto front marked."""
    mflops, auc = _columns(history, "mflops", "val_auc")
    front = pareto_front(mflops, auc)
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        ax.scatter(mflops, auc, color="tab:gray", s=18, alpha=0.6, label="evaluated architectures")
        ax.plot(mflops[front], auc[front], color="tab:red", marker="o", markersize=6, label="Pareto front")
        ax.set_xlabel("MFLOPs per sample")
        ax.set_ylabel("validation AUC")
        ax.set_title("Architecture search: validation AUC vs cost")
        ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _columns(history: Sequence[dict], *keys: str) -> list[np.ndarray]:
    if not history:
        raise ValueError("history is empty: nothing to plot")
    return [np.array([record[key] for record in history], dtype=np.float64) for key in keys]


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path
