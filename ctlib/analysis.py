"""Comparisons of finished runs beyond their accuracy."""
from __future__ import annotations

import numpy as np


def negative_transfer(reference: np.ndarray, other: np.ndarray, target: np.ndarray) -> float:
    """Percentage of test images that the ``reference`` predictions (e.g. a model trained from scratch) get
    right and the ``other`` predictions (e.g. a fine-tuned model) get wrong — the paper's measure of
    negative transfer (3.08 % for fine-tuning, 2.74 % for Bi-Tuning on CUB-200-2011)."""
    reference, other, target = map(np.asarray, (reference, other, target))
    if not reference.shape == other.shape == target.shape:
        raise ValueError(f"predictions and labels must cover the same images: shapes {reference.shape}, "
                         f"{other.shape}, {target.shape}")
    if target.size == 0:
        raise ValueError("no test images")
    return float(100.0 * np.mean((reference == target) & (other != target)))


GROUP = ("dataset", "sample_rate", "seed", "backbone")


def negative_transfer_frame(grid, head: str = "main"):
    """One row per fine-tuned run of ``grid``: beside the from-scratch run of the same dataset, sample rate,
    seed and backbone, the share of test images scratch gets right and the run gets wrong (negative
    transfer), the reverse share, and both runs' top-1 — from the last epoch's saved predictions of
    ``head``."""
    import pandas as pd

    from .engine.run import load_predictions

    groups: dict = {}
    for r in grid.runs:
        key = tuple(getattr(r.config, k) for k in GROUP)
        groups.setdefault(key, []).append(r.config)
    rows = []
    for key, configs in groups.items():
        scratch = [c for c in configs if c.method == "scratch"]
        if not scratch:
            raise ValueError(f"negative transfer needs the from-scratch run of {dict(zip(GROUP, key))}: keep "
                             f"'scratch' in the methods")
        base = load_predictions(scratch[0])
        target = base["target"]
        for c in configs:
            if c.method == "scratch":
                continue
            other = load_predictions(c)
            if head not in other:
                raise ValueError(f"run {c.run_id()} has no head {head!r} (heads: {sorted(set(other) - {'target'})})")
            rows.append({**dict(zip(GROUP, key)), "method": c.method,
                         "scratch_right_method_wrong_pct": negative_transfer(base["main"], other[head], target),
                         "method_right_scratch_wrong_pct": negative_transfer(other[head], base["main"], target),
                         "method_top1": float(100.0 * np.mean(other[head] == target)),
                         "scratch_top1": float(100.0 * np.mean(base["main"] == target))})
    return pd.DataFrame(rows)


def cost_frame(frame):
    """Per run of a table frame (``ctlib.tables.grid_frame``): seconds per training step, peak memory, wall
    time, and each as a ratio to the ERM run of the same dataset, sample rate, seed and backbone."""
    cols = ["method", *GROUP, "step_s", "train_s", "eval_s", "prepare_s", "wall_time_s", "peak_rss_mb", "peak_cuda_mb",
            "device"]
    measures = ["step_s", "wall_time_s", "peak_rss_mb", "peak_cuda_mb"]
    erm = frame.loc[frame["method"] == "erm", [*GROUP, *measures]].astype({m: float for m in measures})
    out = frame[cols].merge(erm, on=list(GROUP), how="left", suffixes=("", "_erm"))
    for m in measures:
        out[f"{m}_x_erm"] = out[m].astype(float) / out.pop(f"{m}_erm")
    return out
