"""A run, fully described: the dataclass ``RunConfig`` and its hash."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields

import torch

from ..validation import check_settings, choice, flag, integer, is_int, real
from .precision import AMP, CHANNELS_LAST

SCHEDULES = ("multistep", "cosine")
KEEP_CHECKPOINT = ("full", "model", "none")
MIN_IMAGE_SIZE = 16      # smallest input size accepted (the backbones' feature maps are 1/32 of it)

# settings that do not change what a run computes: not part of its identity
NON_IDENTITY = ("recipe", "download", "device", "num_workers", "results_dir", "progress", "keep_checkpoint", "eval_batch_size",
                "lock_timeout")


@dataclass
class RunConfig:
    method: str = "concept_tuning"
    method_args: dict = field(default_factory=dict)
    dataset: str = "demo"
    data_root: str | None = None
    sample_rate: int = 100
    val_fraction: float = 0.0            # > 0: carve a stratified validation split from the training data
    backbone: str = "resnet50"
    pretrained: bool | str = True        # True: ImageNet weights; False: random; str: a weight file (MoCo
                                         # checkpoint, converted backbone, torchvision state dict)
    image_size: int = 224
    batch_size: int = 48
    epochs: int = 30
    iters_per_epoch: int = 500
    lr: float = 0.01
    schedule: str = "multistep"          # "multistep" or "cosine" (stepped per epoch)
    milestones: tuple = (12, 24)
    lr_gamma: float = 0.1
    backbone_lr_mult: float = 0.1        # reference --cos silently uses 1.0: recipes say so explicitly
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hflip: bool = True
    color_jitter: bool = False
    seed: int = 0
    skip_bad_images: bool = False        # drop unreadable images (counted in the record) instead of failing
    channels_last: bool | str = "auto"   # channels-last inputs: "auto" (on for CPU and CUDA), True, False
    amp: str = "auto"                    # mixed precision: "auto" (CUDA: bf16, else fp16), "off", "bf16", "fp16"
                                         # channels_last=False, amp="off": the authors' float32 (engine.precision)
    recipe: dict = field(default_factory=dict)   # where the settings come from: name, source, note (ctlib.recipes)
    # not part of the run's identity
    download: bool = False               # let torchvision download the dataset first (users' machines)
    device: str = "cpu"
    num_workers: int = 0
    eval_batch_size: int = 100
    results_dir: str = "results"
    progress: bool = True
    keep_checkpoint: str = "model"       # after finishing keep "full" state, only the "model", or "none"
    lock_timeout: float = 0.0            # seconds to wait for another process training this run (0: fail at once)

    def __post_init__(self):
        from ..data import available
        from ..data.sampling import SAMPLE_RATES
        from ..methods import METHODS
        from ..models.backbones import BACKBONES

        ms = self.milestones
        ms_ok = isinstance(ms, (list, tuple)) and all(is_int(m) and m >= 1 for m in ms) and \
            all(a < b for a, b in zip(ms, ms[1:]))
        check_settings("run", [
            choice("method", self.method, sorted(METHODS)),
            ("method_args", self.method_args, isinstance(self.method_args, dict), "a dict of the method's settings"),
            choice("dataset", self.dataset, available()),
            ("data_root", self.data_root, self.data_root is None or isinstance(self.data_root, (str, os.PathLike)),
             "None or a folder path"),
            choice("sample_rate", self.sample_rate, SAMPLE_RATES),
            real("val_fraction", self.val_fraction, 0, 1, hi_open=True),
            choice("backbone", self.backbone, BACKBONES),
            ("pretrained", self.pretrained, isinstance(self.pretrained, (bool, str, os.PathLike)),
             "True (ImageNet weights), False (random) or a weight file's path"),
            integer("image_size", self.image_size, MIN_IMAGE_SIZE),
            integer("batch_size", self.batch_size, 1), integer("epochs", self.epochs, 1),
            integer("iters_per_epoch", self.iters_per_epoch, 1),
            real("lr", self.lr, 0, lo_open=True), choice("schedule", self.schedule, SCHEDULES),
            ("milestones", ms, ms_ok, "a strictly increasing sequence of epoch numbers >= 1"),
            real("lr_gamma", self.lr_gamma, 0, 1, lo_open=True), real("backbone_lr_mult", self.backbone_lr_mult, 0),
            real("momentum", self.momentum, 0, 1, lo_open=True, hi_open=True),   # > 0: the SGD is Nesterov's
            real("weight_decay", self.weight_decay, 0), flag("hflip", self.hflip),
            flag("color_jitter", self.color_jitter), integer("seed", self.seed, 0),
            flag("skip_bad_images", self.skip_bad_images),
            choice("channels_last", self.channels_last, CHANNELS_LAST), choice("amp", self.amp, AMP),
            ("recipe", self.recipe, isinstance(self.recipe, dict), "a dict (name, source, note)"),
            flag("download", self.download),
            ("device", self.device, _is_device(self.device), "a torch device, e.g. 'cpu', 'cuda' or 'cuda:1', or 'auto'"),
            integer("num_workers", self.num_workers, 0), integer("eval_batch_size", self.eval_batch_size, 1),
            ("results_dir", self.results_dir,
             isinstance(self.results_dir, (str, os.PathLike)) and str(self.results_dir) != "", "a folder path"),
            flag("progress", self.progress), choice("keep_checkpoint", self.keep_checkpoint, KEEP_CHECKPOINT),
            real("lock_timeout", self.lock_timeout, 0)])
        self.milestones = tuple(int(m) for m in ms)
        METHODS[self.method].make_settings(self.method_args)   # the method's own range checks

    def identity(self) -> dict:
        """What the run computes: every setting but NON_IDENTITY, with the method's settings resolved
        (defaults included), so a changed default is a different run."""
        from ..methods import METHODS

        ident = {k: v for k, v in asdict(self).items() if k not in NON_IDENTITY}
        if self.method in METHODS:
            ident["method_args"] = asdict(METHODS[self.method].make_settings(self.method_args))
        return ident

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def run_id(self) -> str:
        return f"{self.method}-{self.dataset}-sr{self.sample_rate}-{self.backbone}-s{self.seed}-{self.hash()}"

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown run setting(s) {bad}: valid settings are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "RunConfig":
        return RunConfig.from_dict({**asdict(self), **changes})


def config_diff(a: dict, b: dict) -> dict:
    """{key: (a value, b value)} for identity keys that differ."""
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str)}


def _is_device(device) -> bool:
    if not isinstance(device, (str, torch.device)):
        return False
    if device == "auto":                 # CUDA, else MPS, else CPU (engine.run.resolve_device)
        return True
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return False
    return True
