"""The paper's experiments as data: run configurations per profile, and the grid of runs each notebook needs.

Profiles scale a grid:
- ``smoke``: CPU minutes on the embedded demo set, EfficientNet-Lite0 (packaged ImageNet weights) at 64 px,
  40 steps a run: what CI runs (nbval) and what shows the pipeline works;
- ``cpu``: a real dataset on a laptop: EfficientNet-Lite0 at 160 px, batch 32, 600 steps a run (4 evaluations),
  with each recipe's learning rates and method settings (its schedule shortened to the profile's);
- ``paper``: GPU, ResNet-50 at 224 px, batch 48, and each run's schedule and settings from its named
  recipe (``ctlib.recipes``: the authors' for Concept-Tuning, TLlib's for the baselines).
Every run's record names the recipe or profile its settings came from (``config.recipe``).
The grids of the notebooks are in ``ctlib.grids``.
"""
from __future__ import annotations

from .engine import RunConfig
from .recipes import METHOD_RUN_DEFAULTS, dataset_classes, default_confusing, recipe

PROFILES = {
    # EfficientNet-Lite0 with its packaged ImageNet weights works offline on any machine
    "smoke": dict(backbone="efficientnet_lite0", image_size=64, batch_size=16, epochs=2, iters_per_epoch=20,
                  milestones=(1,), eval_batch_size=250),
    # the recipe's learning rates and method settings on a shorter schedule
    "cpu": dict(backbone="efficientnet_lite0", image_size=160, batch_size=32, eval_batch_size=100),
    # the schedule (lr, epochs, milestones or cosine, iterations, backbone multiplier) comes from the recipe
    "paper": dict(backbone="resnet50", image_size=224, batch_size=48, eval_batch_size=100),
}

#: the cpu profile's schedule, replacing the recipe's (its lr, backbone multiplier and weight decay stay)
CPU_SCHEDULE = dict(epochs=4, iters_per_epoch=150, milestones=(3,))   # a cosine recipe stays cosine
#: method settings of the smoke profile (the rest are the methods' defaults). In a 40-step run a momentum
#: key encoder must follow the query encoder within the run: momentum 0.99 (the reference's 0.999 is meant
#: for 10,000 steps), and a queue of 8 per class that the 10-class demo set refreshes quickly.
SMOKE_METHOD_ARGS = {"concept_tuning": {"K": 8, "m": 0.99}, "bi_tuning": {"K": 8, "m": 0.99},
                     "delta": {"attention_epochs": 1, "attention_iteration_limit": 2}}
#: the cpu profile's momentum for key encoders: 600 steps, not 10,000
CPU_METHOD_ARGS = {"concept_tuning": {"m": 0.99}, "bi_tuning": {"m": 0.99}}
SMOKE_RECIPE = {"name": "smoke-profile", "source": "ctlib.experiments.PROFILES['smoke']",
                "note": "a few CPU minutes on small images: shows the pipeline works, not the paper's numbers"}


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
    return dict(PROFILES[profile])


def run_config(profile: str, method: str, dataset: str = "demo", sample_rate: int = 100, seed: int = 0,
               pretraining: str = "supervised", data_root=None, method_args: dict | None = None,
               device: str = "cpu", results_dir: str = "results", **overrides) -> RunConfig:
    """One run of ``method`` on ``dataset`` under ``profile``: the profile's fixed settings, then the recipe's
    (``paper``; ``cpu`` on its own schedule) or the smoke settings, then ``method_args`` and ``overrides`` on top."""
    run = profile_settings(profile)
    num_classes = dataset_classes(dataset)
    if profile in ("paper", "cpu"):
        rec = recipe(method, dataset, sample_rate, pretraining, num_classes)
        run.update(rec.run)
        args, described = dict(rec.method_args), rec.describe()
        if profile == "cpu":
            run.update(CPU_SCHEDULE)
            args.update(CPU_METHOD_ARGS.get(method, {}))
            described = {**described, "name": f"{rec.name}@cpu",
                         "note": f"the recipe on the cpu profile's schedule {CPU_SCHEDULE}"
                                 + (f" and {CPU_METHOD_ARGS[method]}" if method in CPU_METHOD_ARGS else "")
                                 + (f"; {rec.note}" if rec.note else "")}
    else:
        run.update(METHOD_RUN_DEFAULTS.get(method, {}))
        args, described = dict(SMOKE_METHOD_ARGS.get(method, {})), dict(SMOKE_RECIPE)
        if method == "concept_tuning" and num_classes:
            args["confusing"] = default_confusing(num_classes)     # C - 1 = 9 on the demo set
    args.update(method_args or {})
    run.update(overrides)
    return RunConfig(method=method, method_args=args, dataset=dataset, data_root=data_root, sample_rate=sample_rate,
                     seed=seed, device=device, results_dir=results_dir, recipe=described, **run)


def quickstart_grid(profile: str = "smoke", dataset: str = "demo", data_root=None, sample_rates=(30, 100),
                    seeds=(0,), methods=("erm", "concept_tuning"), confusing: int | None = None, device: str = "cpu",
                    results_dir=None, **overrides) -> list[RunConfig]:
    """Each method at each sample rate and seed. Concept-Tuning's ``confusing`` comes from the recipe
    (paper: 199 on CUB) or, in the smoke profile, is C − 1 on the demo set's 10 classes. Runs go to
    ``results_dir`` (default ``results/<profile>/runs``, the folder the table notebooks share)."""
    from .grids import default_results_dir
    from .methods import METHODS

    results_dir = results_dir or str(default_results_dir(profile) / "runs")

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {sorted(METHODS)}")
    configs = []
    for seed in seeds:
        for rate in sample_rates:
            for method in methods:
                args = {"confusing": confusing} if method == "concept_tuning" and confusing is not None else None
                configs.append(run_config(profile, method, dataset, rate, seed, data_root=data_root, method_args=args,
                                          device=device, results_dir=results_dir, **overrides))
    return configs
