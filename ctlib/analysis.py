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
