"""Train a grid's runs (finished ones are loaded, interrupted ones resume) under one progress bar, and
estimate beforehand how long the runs still to train will take on the device at hand.

The estimate times a few real training steps of each (method, backbone, image size, batch size, dataset)
among the runs still to train, and one evaluation batch, then scales them to each run's steps and test
images. Method pre-passes (DELTA, Co-Tuning, LWF) are not counted.
"""
from __future__ import annotations

import time

from .engine import RunConfig, fit
from .engine.run import run_dir
from .records import RECORD_NAME


def is_finished(config: RunConfig) -> bool:
    return (run_dir(config) / RECORD_NAME).exists()


def run_steps(config: RunConfig) -> int:
    return config.epochs * config.iters_per_epoch


def _timed_as(c: RunConfig) -> RunConfig:
    """The config whose steps are timed for ``c``: ERM for methods that need a pre-pass before a step."""
    from .methods import METHODS
    from .methods.base import Method

    if METHODS[c.method].prepare is not Method.prepare:
        return c.replace(method="erm", method_args={})
    return c


def _cost_key(c: RunConfig) -> tuple:
    c = _timed_as(c)
    return (c.method, c.backbone, c.image_size, c.batch_size, c.dataset, c.data_root, c.device)


def time_steps(config: RunConfig, steps: int = 2) -> dict:
    """Seconds per training step (after one warm-up step) and per evaluated test image of ``config``'s
    method, measured here; nothing is written."""
    import torch

    from .engine.precision import train_step
    from .engine.run import Run

    run = Run(config.replace(progress=False))
    run.method.train()
    batches = iter(run.loader(0))
    times = []
    for i in range(steps + 1):
        views, labels, *rest = next(batches)
        views = [v.to(run.device) for v in views]
        labels = labels.to(run.device)
        extra = {"index": rest[0].to(run.device)} if run.method.needs_index else {}
        t0 = time.perf_counter()
        train_step(run.method, run.optimizer, run.precision, views, labels, 0, extra)   # as Run.train_epoch
        run.precision.step(run.optimizer)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        if i:
            times.append(time.perf_counter() - t0)
    run.method.eval()
    n = min(len(run.test), config.eval_batch_size)
    images = torch.stack([run.test[i][0] for i in range(n)]).to(run.device)
    t0 = time.perf_counter()
    with torch.no_grad(), run.precision.autocast():
        run.method.heads(run.precision.images(images))
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    return {"step_s": sorted(times)[len(times) // 2], "eval_image_s": (time.perf_counter() - t0) / n,
            "test_images": len(run.test)}


def estimate(configs, steps: int = 2, progress: bool = True):
    """A DataFrame, one row per run still to train, with its estimated seconds (training + evaluation
    after each epoch), from ``steps`` timed steps of each distinct (method, backbone, size, batch, dataset)."""
    import pandas as pd
    from tqdm.auto import tqdm

    todo = [c for c in configs if not is_finished(c)]
    keys = {}
    for c in todo:
        keys.setdefault(_cost_key(c), _timed_as(c))
    timed = {}
    for key, c in tqdm(keys.items(), desc="timing steps", disable=not progress or not keys, leave=False):
        timed[key] = time_steps(c, steps)
    rows = []
    for c in todo:
        t = timed[_cost_key(c)]
        seconds = t["step_s"] * run_steps(c) + t["eval_image_s"] * t["test_images"] * c.epochs
        rows.append({"run_id": c.run_id(), "method": c.method, "backbone": c.backbone, "steps": run_steps(c),
                     "step_s": t["step_s"], "estimate_s": seconds})
    return pd.DataFrame(rows, columns=["run_id", "method", "backbone", "steps", "step_s", "estimate_s"])


def human_time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_estimate(grid, steps: int = 2, progress: bool = True) -> str:
    """What is left to train in ``grid`` and about how long it takes here."""
    configs = grid.unique_configs()
    est = estimate(configs, steps, progress)
    done = len(configs) - len(est)
    if est.empty:
        return f"all {len(configs)} runs are finished: their records are loaded, nothing is trained"
    device = configs[0].device
    return (f"{done} of {len(configs)} runs finished; {len(est)} to train, about {human_time(est['estimate_s'].sum())} "
            f"on {device} (from {steps} timed steps of each method and backbone here; DELTA, Co-Tuning and LWF "
            f"timed as ERM, their pre-passes not counted); results in {grid.results_dir}")


def fit_grid(grid, progress: bool = True) -> list:
    """Train (or load) every distinct run of ``grid`` in order; one bar over the grid's training steps,
    advanced after every epoch. Returns the records, in the grid's distinct-run order."""
    from tqdm.auto import tqdm

    configs = grid.unique_configs()
    total = sum(run_steps(c) for c in configs)
    records = []
    with tqdm(total=total, desc=f"{grid.notebook}: {len(configs)} runs", unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        for c in configs:
            done = [0]
            bar.set_postfix_str(f"{c.method} {c.dataset} {c.sample_rate}% seed {c.seed}", refresh=False)

            def on_epoch(epoch, c=c, done=done):
                bar.update(epoch * c.iters_per_epoch - done[0])
                done[0] = epoch * c.iters_per_epoch

            records.append(fit(c.replace(progress=False), on_epoch=on_epoch))
            bar.update(run_steps(c) - done[0])
    return records
