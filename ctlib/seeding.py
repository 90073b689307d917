"""One seeding helper for every run, and the RNG state a checkpoint needs to resume exactly.

``rng_state`` holds only tensors, numbers, strings and plain containers, so a checkpoint holding it
loads with ``torch.load(weights_only=True)``; ``set_rng_state`` also takes the older form (numpy's state
as its tuple with an array).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device); cuDNN deterministic, no benchmark."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    name, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, dict):
        ns = (ns["bit_generator"], ns["key"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"],
              ns["cached_gaussian"])
    np.random.set_state(ns)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. run seed and epoch), stable across runs and platforms."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h
