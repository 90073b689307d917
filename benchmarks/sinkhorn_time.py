"""Time the concept-level loss's optimal transport (``ctlib.concept.sinkhorn_log``) at a step's sizes.

One Concept-Tuning step solves, per sample, one Sinkhorn problem per queued set of its class and of each of
its confusing classes (B·(1 + K + confusing·K) pairs of P × P patches: 64,008 at the reference's CUB
sizes). This script builds such a step's costs from random unit embeddings (which take 20–30 iterations to
converge, as trained ones do: records of real runs show 17–78 on average) and times, in one process:

- ``sinkhorn``: ``sinkhorn_log`` alone on all the step's pairs;
- ``concept_loss``: ``concept_logits`` + ``concept_contrastive_loss`` forward and backward.

With ``--baseline REV``, the same is timed with ``ctlib/concept/sinkhorn.py`` as it was at git revision REV
(read with ``git show``), alternating with the working tree's, and the ratios are printed. The last line
is one JSON object.

Usage (from the repository root)::

    python benchmarks/sinkhorn_time.py                      # B 8, P 9, 200 classes, K 40, 199 confusing
    python benchmarks/sinkhorn_time.py --baseline 591cbe7   # against the layout before (pairs outermost)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ctlib.concept import concept_contrastive_loss, losses  # noqa: E402
from ctlib.concept import sinkhorn_log as current  # noqa: E402


def load_revision(rev: str):
    """``sinkhorn_log`` of ``ctlib/concept/sinkhorn.py`` at git revision ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:ctlib/concept/sinkhorn.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType(f"sinkhorn_at_{rev}")
    exec(compile(src, f"{rev}:ctlib/concept/sinkhorn.py", "exec"), mod.__dict__)
    return mod.sinkhorn_log


def inputs(a: argparse.Namespace):
    g = torch.Generator().manual_seed(a.seed)
    B, P, C, K = a.batch, a.patches, a.classes, a.K
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    e_q, e_k, queue_h = unit(B, P, C), unit(B, P, C), unit(C, K, P, C)
    labels = torch.randint(C, (B,), generator=g)
    conf = torch.stack([torch.tensor([c for c in torch.randperm(C, generator=g).tolist() if c != y][:a.confusing])
                        for y in labels.tolist()])
    return e_q, e_k, queue_h, labels, conf


def step_costs(e_q, e_k, queue_h, labels, conf):
    """The (N, P, P) costs and groups ``concept_logits`` hands to ``sinkhorn_log`` (captured from a call)."""
    seen = {}

    def capture(costs, eps, max_iter, tol, groups):
        seen.update(costs=costs.detach().clone(), groups=groups.clone())
        return current(costs, eps, max_iter, tol, groups)

    losses.sinkhorn_log = capture
    try:
        losses.concept_logits(e_q, e_k, queue_h, labels, conf)
    finally:
        losses.sinkhorn_log = current
    return seen["costs"], seen["groups"]


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patches", type=int, default=9, help="patches per image (P)")
    p.add_argument("--classes", type=int, default=200, help="classes (also the embedding width)")
    p.add_argument("--K", type=int, default=40, help="queue length per class")
    p.add_argument("--confusing", type=int, default=199)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (after one untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", metavar="REV", help="also time sinkhorn.py at this git revision, alternately")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    e_q, e_k, queue_h, labels, conf = inputs(a)
    costs, groups = step_costs(e_q, e_k, queue_h, labels, conf)
    impls = {"current": current}
    if a.baseline:
        impls["baseline"] = load_revision(a.baseline)

    def sinkhorn(fn):
        return lambda: fn(costs, 0.01, 200, 1e-3, groups)

    def concept_loss(fn):
        def run():
            losses.sinkhorn_log = fn
            try:
                q = e_q.clone().requires_grad_()
                logits, _ = losses.concept_logits(q, e_k, queue_h, labels, conf)
                concept_contrastive_loss(logits, a.K, 0.07).backward()
            finally:
                losses.sinkhorn_log = current
        return run

    times = {(part, name): [] for part in ("sinkhorn", "concept_loss") for name in impls}
    for part, make in (("sinkhorn", sinkhorn), ("concept_loss", concept_loss)):
        for name, fn in impls.items():
            make(fn)()                                     # untimed first call
        for _ in range(a.repeats):                         # alternate, so load drifts hit both alike
            for name, fn in impls.items():
                times[part, name].append(seconds(make(fn)))
    solved = {name: fn(costs, 0.01, 200, 1e-3, groups) for name, fn in impls.items()}    # (plan, iterations)
    res = {"pairs": costs.shape[0], "patches": a.patches, "threads": a.threads,
           "iterations": {name: it for name, (_, it) in solved.items()},
           "median_s": {f"{part}/{name}": round(statistics.median(t), 4) for (part, name), t in times.items()}}
    if a.baseline:
        res["baseline"] = a.baseline
        res["speedup"] = {part: round(statistics.median(times[part, "baseline"]) /
                                      statistics.median(times[part, "current"]), 3)
                          for part in ("sinkhorn", "concept_loss")}
        res["max_plan_difference"] = float((solved["current"][0] - solved["baseline"][0]).abs().max())
    for key, value in res["median_s"].items():
        print(f"{key:28s} {value:.4f} s", file=sys.stderr)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
