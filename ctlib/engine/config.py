"""A run, fully described: the dataclass ``RunConfig`` and its hash."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

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
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.schedule not in ("multistep", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}: choose 'multistep' or 'cosine'")
        if self.keep_checkpoint not in ("full", "model", "none"):
            raise ValueError(f"keep_checkpoint must be 'full', 'model' or 'none', not {self.keep_checkpoint!r}")
        if not isinstance(self.lock_timeout, (int, float)) or not self.lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a number of seconds >= 0, got {self.lock_timeout!r}")
        for name in ("batch_size", "epochs", "iters_per_epoch", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

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
