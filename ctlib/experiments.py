"""The paper's experiments as data: run configurations per profile, and the grid of runs each notebook needs.

Profiles scale a grid:
- ``smoke``: CPU minutes on the embedded demo set, EfficientNet-Lite0 (packaged ImageNet weights) at 64 px;
- ``paper``: GPU, ResNet-50 at 224 px, batch 48, and each run's schedule and settings from its named
  recipe (``ctlib.recipes``: the authors' for Concept-Tuning, TLlib's for the baselines).
Every run's record names the recipe or profile its settings came from (``config.recipe``).
"""
from __future__ import annotations

from .engine import RunConfig
from .recipes import METHOD_RUN_DEFAULTS, dataset_classes, default_confusing, recipe

PROFILES = {
    # EfficientNet-Lite0 with its packaged ImageNet weights works offline on any machine
    "smoke": dict(backbone="efficientnet_lite0", image_size=64, batch_size=16, epochs=3, iters_per_epoch=25,
                  milestones=(2,), eval_batch_size=200),
    # the schedule (lr, epochs, milestones or cosine, iterations, backbone multiplier) comes from the recipe
    "paper": dict(backbone="resnet50", image_size=224, batch_size=48, eval_batch_size=100),
}

#: method settings of the smoke profile (the rest are the methods' defaults). In a 75-step run a momentum
#: key encoder must follow the query encoder within the run: momentum 0.99 (the reference's 0.999 is meant
#: for 10,000 steps), and a queue of 8 per class that the 10-class demo set refreshes quickly.
SMOKE_METHOD_ARGS = {"concept_tuning": {"K": 8, "m": 0.99}, "bi_tuning": {"K": 8, "m": 0.99},
                     "delta": {"attention_epochs": 1, "attention_iteration_limit": 2}}
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
    (``paper``) or the smoke settings, then ``method_args`` and ``overrides`` on top."""
    run = profile_settings(profile)
    num_classes = dataset_classes(dataset)
    if profile == "paper":
        rec = recipe(method, dataset, sample_rate, pretraining, num_classes)
        run.update(rec.run)
        args, described = dict(rec.method_args), rec.describe()
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
                    results_dir: str = "results/quickstart", **overrides) -> list[RunConfig]:
    """Each method at each sample rate and seed. Concept-Tuning's ``confusing`` comes from the recipe
    (paper: 199 on CUB) or, in the smoke profile, is C − 1 on the demo set's 10 classes."""
    from .methods import METHODS

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
