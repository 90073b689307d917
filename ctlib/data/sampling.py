"""Per-class sample rates (15 / 30 / 50 / 100 % of each class's training images) and
deterministic validation carve-outs."""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

SAMPLE_RATES = (15, 30, 50, 100)


def check_sample_rate(sample_rate: int) -> int:
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"unknown sample rate {sample_rate!r}: choose one of {list(SAMPLE_RATES)} (percent of "
                         "each class's training images)")
    return int(sample_rate)


def per_class_count(n: int, sample_rate: int) -> int:
    """How many of a class's ``n`` images a rate keeps: rounded half up, at least one."""
    return max(1, min(n, math.floor(n * sample_rate / 100 + 0.5)))


def sample_per_class(targets: Sequence[int], sample_rate: int, seed: int = 0) -> list[int]:
    """Indices of a class-balanced subset with ``sample_rate`` % of each class, sorted.

    Deterministic in (targets, sample_rate, seed). Subsets of one seed are nested: the 15 %
    list is inside the 30 % list, and so on, because every rate takes a prefix of the same
    per-class permutation.
    """
    check_sample_rate(sample_rate)
    targets = np.asarray(targets)
    if sample_rate == 100:
        return list(range(len(targets)))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        keep.append(idx[:per_class_count(len(idx), sample_rate)])
    return sorted(int(i) for i in np.concatenate(keep))


def split_validation(targets: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Carve a class-stratified validation part (``fraction`` of each class, at least one image
    where a class has two or more) out of training indices. Returns (train, val), sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed + 7919)
    train, val = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = 0 if len(idx) < 2 else max(1, min(len(idx) - 1, round(len(idx) * fraction)))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def list_checksum(lines: Sequence[str]) -> str:
    """sha256 of a sample list (one entry a line), as recorded in run records."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
