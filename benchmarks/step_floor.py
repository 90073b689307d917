"""The lowest Concept-Tuning / ERM step-time ratio that the faithful step's network passes allow.

A faithful Concept-Tuning step (METHOD.md §2.10) contains, besides its heads, losses and optimal transport,
these passes through the backbone, none of which another formulation with the same numbers can skip:

- ``query_full``: the query encoder's forward and backward on the full image v0 (what ERM's step does);
- ``key_full`` × 3: the key encoder's forwards (no gradient) on v2 (patch search, before the momentum
  update), v1 (image-level key) and v3 (patch search);
- ``key_crops``: the key encoder on the P·B crops of v3 (no gradient, BatchNorm statistics per slot);
- ``query_crops``: the query encoder on the P·B crops of v2, forward and backward (statistics per slot).

This script times each pass in one process with ``step_time.py``'s set-up (ResNet-50, 224 px, batch 8,
2 threads, the run's default layout), and ERM's and Concept-Tuning's whole steps, and prints

    floor = (query_full + 3·key_full + key_crops + query_crops + CT's optimiser step) / ERM step

a lower bound of the ratio ``step_time.py`` measures: everything else in the step (the front-door head,
patch search, Sinkhorn, losses, momentum update, queues) only adds to it. Where the floor itself is near a
target, no work on those other parts can reach it with the reference's numbers.
``--patch-forward batched`` times the crop passes with BatchNorm statistics over all crops (a departure),
to show what per-slot statistics cost. The last line is one JSON object.

Usage (from the repository root)::

    python benchmarks/step_floor.py
    python benchmarks/step_floor.py --backbone resnet18 --size 112 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_time  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="timed calls of each pass and step (after one untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch-forward", choices=("grouped", "batched"), default="grouped")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    # the rest of step_time's options, at their defaults
    return step_time.parse_args(["--backbone", a.backbone, "--size", str(a.size), "--batch", str(a.batch),
                                 "--classes", str(a.classes), "--threads", str(a.threads),
                                 "--channels-last", a.channels_last, "--patch-forward", a.patch_forward,
                                 "--steps", str(a.repeats)])


def median_time(fn, repeats: int) -> float:
    fn()                                                   # untimed: first-call allocations and kernel choice
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pass_times(a: argparse.Namespace) -> dict:
    """Median seconds of each backbone pass of a faithful step, and of CT's own optimiser step."""
    import torch
    import torch.nn.functional as F

    from ctlib.methods.concept_tuning import _restore_bn_momentum, _set_bn_momentum

    b = step_time.build(a, "concept_tuning")
    m, p = b.method, b.precision
    v0, v1, v2, v3 = (p.images(v) for v in b.views)
    boxes_q = m._search(v2, b.labels).boxes
    boxes_k = m._search(v3, b.labels).boxes

    def key_full():
        with torch.no_grad():
            m.encoder_k(v1)

    def key_crops():
        with torch.no_grad():
            m._embed(m.encoder_k, v3, boxes_k)

    def query_crops():
        bn = _set_bn_momentum(m.encoder_q, 0.0)
        try:
            m._embed(m.encoder_q, v2, boxes_q).sum().backward()
        finally:
            _restore_bn_momentum(m.encoder_q, bn)
        b.optimizer.zero_grad(set_to_none=True)

    def query_full():
        F.cross_entropy(m.encoder_q(v0)[0], b.labels).backward()
        b.optimizer.zero_grad(set_to_none=True)

    def optimiser():                      # gradients of every parameter the step trains, then SGD's step
        b.precision.step(b.optimizer)

    out = {name: median_time(fn, a.steps) for name, fn in
           (("query_full", query_full), ("key_full", key_full), ("key_crops", key_crops),
            ("query_crops", query_crops))}
    for group in b.optimizer.param_groups:
        for q in group["params"]:
            q.grad = torch.zeros_like(q)
    out["optimiser"] = median_time(optimiser, a.steps)
    b.optimizer.zero_grad(set_to_none=True)
    out["ct_step"] = median_time(lambda: b.step(0), a.steps)
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    load_before = os.getloadavg()[0]
    erm = step_time.build(a, "erm")
    erm_step = median_time(lambda: erm.step(0), a.steps)
    del erm
    t = pass_times(a)
    floor_s = t["query_full"] + 3 * t["key_full"] + t["key_crops"] + t["query_crops"] + t["optimiser"]
    res = {"backbone": a.backbone, "size": a.size, "batch": a.batch, "classes": a.classes, "threads": a.threads,
           "patch_forward": a.patch_forward, "channels_last": a.channels_last,
           "passes_s": {k: round(v, 4) for k, v in t.items() if k != "ct_step"},
           "erm_step_s": round(erm_step, 4), "ct_step_s": round(t["ct_step"], 4), "floor_s": round(floor_s, 4),
           "floor_ratio": round(floor_s / erm_step, 3), "time_ratio": round(t["ct_step"] / erm_step, 3),
           "rest_s": round(t["ct_step"] - floor_s, 4),
           "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"{a.backbone}, {a.size} px, batch {a.batch}, {a.threads} threads, crops {a.patch_forward}; "
          f"median of {a.steps}", file=sys.stderr)
    for k, v in res["passes_s"].items():
        print(f"  {k:12s} {v:.3f} s" + ("  (x3 in a step)" if k == "key_full" else ""), file=sys.stderr)
    print(f"  ERM step {erm_step:.3f} s; CT step {t['ct_step']:.3f} s = {res['time_ratio']:.2f}x; "
          f"passes alone {floor_s:.3f} s = {res['floor_ratio']:.2f}x (the floor); the rest {res['rest_s']:.3f} s",
          file=sys.stderr)
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
