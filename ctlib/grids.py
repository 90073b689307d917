"""The grid of runs behind each notebook, as data: which datasets, sample rates, methods, seeds and
variants a table needs under each profile, and the stand-ins the ``smoke`` profile uses.

``table_grid(name, profile, ...)`` returns a ``Grid``: one ``GridRun`` per run (its ``RunConfig`` and the
labels its table row needs: variant, setting, backbone ...). Identical configs are the same run
everywhere (``RunConfig.run_id``): the fine-tuning run of ``fgvc_supervised`` also serves
``negative_transfer``, ``attention_maps`` and ``cost``, and is trained once. All notebooks of a profile
share one results folder (``results/<profile>``): runs under ``runs/``, tables as CSV beside the
executed notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .experiments import profile_settings, run_config
from .recipes import FINE_GRAINED

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ("erm", "linear_probe", "scratch", "l2_sp", "delta", "bss", "co_tuning", "stochnorm", "lwf",
               "bi_tuning", "concept_tuning")
#: Co-Tuning and LWF need the ImageNet classifier, which a MoCo checkpoint does not have (README: Methods)
SELF_SUPERVISED_METHODS = ("erm", "l2_sp", "delta", "bss", "stochnorm", "bi_tuning", "concept_tuning")
GENERAL_DATASETS = ("food101", "cifar10", "cifar100", "sun397", "dtd", "oxford_pets", "caltech101", "flowers102")
ARCHITECTURES = ("resnet18", "resnet34", "resnet101", "resnet152", "efficientnet_lite0")
DEMO_STANDIN = "the embedded demo set (Fashion-MNIST, 10 classes) stands in for {}"

#: Concept-Tuning with one part switched off (README: Faithfulness, ablation switches), beside ERM and the full method
ABLATIONS = (
    ("ERM (fine-tuning)", "erm", {}),
    ("Concept-Tuning (full)", "concept_tuning", {}),
    ("without the concept-level loss", "concept_tuning", {"concept_loss": False}),
    ("without the image-level loss", "concept_tuning", {"image_loss": False}),
    ("front-door head only (no contrastive loss)", "concept_tuning", {"concept_loss": False, "image_loss": False}),
    ("without the front-door head", "concept_tuning", {"frontdoor": False}),
    ("without the information bottleneck", "concept_tuning", {"bottleneck": False}),
    ("channel attention only", "concept_tuning", {"attention": "channel"}),
    ("position attention only", "concept_tuning", {"attention": "position"}),
)

#: Concept-Tuning settings swept by ``sensitivity``; a value equal to the run's default (e.g. the derived box
#: size) is the full method's own run. 9 slices is the most the reference's slicing fits in 2048 channels, and 4 the
#: fewest its 10 negatives (neg_top) fit in the 4 × 4 transport plan.
SENSITIVITY = {
    "paper": {"K": [10, 20, 40, 80], "T": [0.03, 0.05, 0.07, 0.1, 0.2], "confusing": [25, 50, 100, 150, 199],
              "num_patches": [4, 6, 9], "box_size": [32, 48, 64, 96]},
    "cpu": {"K": [10, 40], "T": [0.05, 0.07, 0.2], "confusing": [50, 199], "num_patches": [4, 9],
            "box_size": [32, 46, 64]},
    "smoke": {"K": [4, 8], "T": [0.07, 0.2], "confusing": [3, 9], "num_patches": [4, 9], "box_size": [12, 18]},
}

#: each notebook's default grid per profile (a notebook parameter left at None takes these)
DEFAULTS = {
    "fgvc_supervised": {
        "paper": dict(datasets=FINE_GRAINED, sample_rates=(15, 30, 50, 100), methods=ALL_METHODS, seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(30, 100), methods=ALL_METHODS, seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,))},
    "fgvc_selfsupervised": {
        "paper": dict(datasets=FINE_GRAINED, sample_rates=(15, 30, 50, 100), methods=SELF_SUPERVISED_METHODS,
                      seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), methods=SELF_SUPERVISED_METHODS, seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=("erm", "bss", "bi_tuning", "concept_tuning"),
                      seeds=(0,))},
    "general_datasets": {
        "paper": dict(datasets=GENERAL_DATASETS, sample_rates=(100,), methods=ALL_METHODS, seeds=(0,)),
        "cpu": dict(datasets=("dtd", "oxford_pets"), sample_rates=(100,), methods=("erm", "bi_tuning", "concept_tuning"),
                    seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,))},
    "architectures": {
        "paper": dict(datasets=("cub200",), sample_rates=(100,), methods=("erm", "bi_tuning", "concept_tuning"),
                      seeds=(0,), backbones=ARCHITECTURES),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), methods=("erm", "bi_tuning", "concept_tuning"),
                    seeds=(0,), backbones=("efficientnet_lite0", "resnet18")),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=("erm", "bi_tuning", "concept_tuning"),
                      seeds=(0,), backbones=("efficientnet_lite0", "resnet18"))},
    "ablation": {
        "paper": dict(datasets=("cub200",), sample_rates=(15, 100), seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), seeds=(0,))},
    "sensitivity": {
        "paper": dict(datasets=("cub200",), sample_rates=(100,), seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), seeds=(0,))},
    "negative_transfer": {
        "paper": dict(datasets=("cub200",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,))},
    "attention_maps": {
        "paper": dict(datasets=("cub200",), sample_rates=(100,),
                      methods=("scratch", "linear_probe", "erm", "bi_tuning", "concept_tuning"), seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,),
                    methods=("scratch", "linear_probe", "erm", "bi_tuning", "concept_tuning"), seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,),
                      methods=("scratch", "linear_probe", "erm", "bi_tuning", "concept_tuning"), seeds=(0,))},
    "cost": {
        "paper": dict(datasets=("cub200",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,)),
        "cpu": dict(datasets=("cub200",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,)),
        "smoke": dict(datasets=("demo",), sample_rates=(100,), methods=ALL_METHODS, seeds=(0,))},
}
NOTEBOOKS = tuple(DEFAULTS)
#: what each notebook reproduces (the README's table and ``ctlib reproduce``'s index)
TITLES = {
    "fgvc_supervised": "Fine-grained datasets × sample rates × every method, supervised ImageNet pre-training",
    "fgvc_selfsupervised": "The same grid from a MoCo (self-supervised) checkpoint",
    "general_datasets": "The remaining datasets of the eleven at 100 %",
    "architectures": "Other backbones: ERM vs Bi-Tuning vs Concept-Tuning",
    "ablation": "Concept-Tuning with each part switched off (both heads)",
    "sensitivity": "Sensitivity to K, T, confusing, the number of patches and the box size",
    "negative_transfer": "Share of test images the from-scratch model gets right and a fine-tuned one wrong",
    "attention_maps": "Fig. 1: Eigen-Grad-CAM on the last stage, five training methods",
    "cost": "Time per step, peak memory and wall time per run",
}


class GridError(ValueError):
    """A grid that cannot be built: unknown notebook, profile, dataset, method or seed, or missing data."""


@dataclass
class GridRun:
    config: object                   # RunConfig
    labels: dict = field(default_factory=dict)   # what the table row needs beyond the config


@dataclass
class Grid:
    notebook: str
    profile: str
    runs: list
    results_dir: Path
    standins: list = field(default_factory=list)   # what the smoke profile substitutes, for the tables' captions

    @property
    def configs(self) -> list:
        return [r.config for r in self.runs]

    def unique_configs(self) -> list:
        """One config per distinct run (a grid may name the same run twice: e.g. a sweep's default value)."""
        seen, out = set(), []
        for c in self.configs:
            if c.run_id() not in seen:
                seen.add(c.run_id())
                out.append(c)
        return out

    def describe(self) -> str:
        n = len(self.unique_configs())
        steps = sum(c.epochs * c.iters_per_epoch for c in self.unique_configs())
        lines = [f"{self.notebook} ({self.profile} profile): {n} runs, {steps:,} training steps in all"]
        lines += [f"stand-in: {s}" for s in self.standins]
        return "\n".join(lines)


def _pick(value, default, what: str):
    if value is None:
        return list(default)
    if isinstance(value, (str, int, float)):
        value = [value]
    value = list(value)
    if not value:
        raise GridError(f"{what}: an empty list; leave it None for the profile's default {list(default)}")
    return value


def _check(notebook: str, profile: str, datasets, sample_rates, methods, seeds) -> None:
    from .data import SAMPLE_RATES, available
    from .methods import METHODS

    bad = [d for d in datasets if d not in available()]
    if bad:
        raise GridError(f"unknown dataset(s) {bad}: choose from {available()} (`ctlib data list`)")
    bad = [r for r in sample_rates if r not in SAMPLE_RATES]
    if bad:
        raise GridError(f"unknown sample rate(s) {bad}: choose from {list(SAMPLE_RATES)}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise GridError(f"unknown method(s) {bad}: choose from {sorted(METHODS)}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise GridError(f"seeds must be non-negative integers, got {bad}")


def check_data_roots(datasets, data_roots: dict) -> None:
    """Every dataset but the embedded demo set needs its folder."""
    missing = [d for d in datasets if d != "demo" and not data_roots.get(d)]
    if missing:
        d = missing[0]
        raise GridError(f"no data root for dataset(s) {missing}: pass data_roots={{'{d}': '/path/to/{d}'}} (the "
                        f"notebook parameter, or `ctlib reproduce --data-root {d}=PATH`); check a folder first with "
                        f"`ctlib data check {d} PATH` (data/README.md says where to get it)")
    from .data import available

    bad = [d for d in data_roots if d not in available()]
    if bad:
        raise GridError(f"data root given for unknown dataset(s) {bad}: choose from {available()}")


def moco_standin(results_dir: Path) -> Path:
    """The packaged ImageNet EfficientNet-Lite0 weights re-saved in the layout of a MoCo training checkpoint
    (``module.encoder_q.*``, no class head): the ``smoke`` profile's stand-in for a MoCo checkpoint, so the
    self-supervised grid's loading path runs offline. Written once under ``results_dir/standins``."""
    import torch

    from .models import build_backbone
    from .models.checkpoints import MOCO_PREFIX
    from .records import save_torch_atomic

    path = Path(results_dir).resolve() / "standins" / "moco_layout_efficientnet_lite0.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        body = build_backbone("efficientnet_lite0", True).body.net.state_dict()
        state = {MOCO_PREFIX + k: v for k, v in body.items() if not k.startswith("_fc.")}
        state["module.queue"] = torch.zeros(1)           # a MoCo file's extra keys are dropped when loaded
        save_torch_atomic({"state_dict": state, "arch": "efficientnet_lite0"}, path)
    return path


def _entries(notebook: str, profile: str, methods, backbones, settings) -> list:
    """(labels, method, method_args, run overrides) of one cell of the grid, per dataset/rate/seed."""
    if notebook == "ablation":
        return [({"variant": name}, m, dict(args), {}) for name, m, args in ABLATIONS]
    if notebook == "sensitivity":
        out = []
        for setting, values in settings.items():
            for v in values:
                out.append(({"setting": setting, "value": v}, "concept_tuning", {setting: v}, {}))
        return out
    if notebook == "architectures":
        return [({"backbone": b}, m, {}, {"backbone": b}) for b in backbones for m in methods]
    return [({}, m, {}, {}) for m in methods]


def _unless_default(profile: str, dataset: str, rate: int, setting: str, value) -> dict:
    """``{setting: value}``, or ``{}`` when ``value`` is what the run uses anyway: then the sweep's point is the
    full method's run, trained once."""
    from .concept.patches import REF_BOX_SIZE, REF_IMAGE_SIZE
    from .methods import METHODS

    base = run_config(profile, "concept_tuning", dataset, rate)
    default = getattr(METHODS["concept_tuning"].make_settings(base.method_args), setting)
    if setting == "box_size" and default is None:
        default = max(2, round(REF_BOX_SIZE * base.image_size / REF_IMAGE_SIZE))
    return {} if value == default else {setting: value}


def default_results_dir(profile: str) -> Path:
    return REPO_ROOT / "results" / profile


def table_grid(notebook: str, profile: str = "smoke", datasets=None, data_roots: dict | None = None,
               sample_rates=None, methods=None, seeds=None, device: str = "cpu", results_dir=None,
               backbones=None, settings: dict | None = None, moco_checkpoint=None, **overrides) -> Grid:
    """The runs ``notebook`` needs under ``profile``. Arguments left None take the notebook's default for the
    profile (``DEFAULTS``); ``overrides`` go to every RunConfig (e.g. ``iters_per_epoch``)."""
    if notebook not in DEFAULTS:
        raise GridError(f"unknown notebook {notebook!r}: choose one of {list(NOTEBOOKS)}")
    try:
        profile_settings(profile)
    except ValueError as e:
        raise GridError(str(e)) from None
    d = DEFAULTS[notebook][profile]
    if methods is not None and notebook in ("ablation", "sensitivity"):
        raise GridError(f"{notebook} defines its own Concept-Tuning variants: it takes no methods (got {methods})")
    datasets = _pick(datasets, d["datasets"], "datasets")
    sample_rates = _pick(sample_rates, d["sample_rates"], "sample_rates")
    methods = _pick(methods, d.get("methods", ("concept_tuning",)), "methods")
    seeds = _pick(seeds, d["seeds"], "seeds")
    _check(notebook, profile, datasets, sample_rates, methods, seeds)
    data_roots = dict(data_roots or {})
    check_data_roots(datasets, data_roots)
    backbones = _pick(backbones, d.get("backbones", ()), "backbones") if notebook == "architectures" else []
    from .models.backbones import BACKBONES
    bad = [b for b in backbones if b not in BACKBONES]
    if bad:
        raise GridError(f"unknown backbone(s) {bad}: choose from {list(BACKBONES)}")
    if notebook == "sensitivity":
        settings = dict(SENSITIVITY[profile] if settings is None else settings)
        from .methods.concept_tuning import ConceptTuningSettings
        known = set(ConceptTuningSettings.__dataclass_fields__)
        bad = [s for s in settings if s not in known]
        if bad:
            raise GridError(f"unknown Concept-Tuning setting(s) {bad} to sweep: choose from {sorted(known)}")
    results_dir = Path(results_dir) if results_dir else default_results_dir(profile)
    runs_dir = str(results_dir / "runs")

    standins, pretraining, pretrained = [], "supervised", None
    smoke_demo = [d for d in datasets if d == "demo"]
    if notebook == "fgvc_selfsupervised":
        pretraining = "moco"
        if moco_checkpoint:
            pretrained = str(Path(moco_checkpoint).expanduser().resolve())
            if not Path(pretrained).is_file():
                raise GridError(f"moco_checkpoint {pretrained} is not a file (a MoCo v1/v2 training checkpoint, "
                                "e.g. moco_v1_200ep_pretrain.pth.tar from facebookresearch/moco)")
        elif profile == "smoke":
            pretrained = str(moco_standin(results_dir))
            standins.append("MoCo checkpoint: the packaged ImageNet EfficientNet-Lite0 weights re-saved in MoCo's "
                            "layout (module.encoder_q.*, no class head), so the numbers are supervised pre-training's")
        else:
            raise GridError("fgvc_selfsupervised needs moco_checkpoint: the path of a MoCo v1/v2 training checkpoint "
                            "(TLlib's table uses moco_v1_200ep_pretrain.pth.tar from facebookresearch/moco) or of "
                            "a converted backbone (`ctlib convert-moco`)")
    if smoke_demo and profile == "smoke":
        meant = {"fgvc_supervised": "CUB-200-2011, Stanford Cars and FGVC-Aircraft",
                 "fgvc_selfsupervised": "CUB-200-2011, Stanford Cars and FGVC-Aircraft",
                 "general_datasets": "the eight other datasets of the eleven"}.get(notebook, "CUB-200-2011")
        standins.insert(0, DEMO_STANDIN.format(meant))

    runs = []
    for dataset in datasets:
        for rate in sample_rates:
            for seed in seeds:
                for labels, method, args, extra in _entries(notebook, profile, methods, backbones, settings):
                    extra = dict(extra)
                    if notebook == "sensitivity":
                        args = _unless_default(profile, dataset, rate, labels["setting"], labels["value"])
                    if pretrained and method != "scratch":
                        extra["pretrained"] = pretrained
                    backbone = extra.get("backbone")
                    if profile == "smoke" and backbone and backbone.startswith("resnet"):
                        extra["pretrained"] = False       # no offline ImageNet weights for ResNets
                        note = f"{backbone}: random initialisation (its ImageNet weights are not available offline)"
                        if note not in standins:
                            standins.append(note)
                    config = run_config(profile, method, dataset, rate, seed, pretraining, data_roots.get(dataset),
                                        method_args=args, device=device, results_dir=runs_dir,
                                        **{**extra, **overrides})
                    runs.append(GridRun(config, dict(labels)))
    return Grid(notebook, profile, runs, results_dir, standins)
