"""Fit and evaluate one run from its config; checkpoint every epoch, resume, write one record.

``fit(config)``:
- a finished run (its record exists with the same config hash) is returned, not re-run;
- an interrupted run resumes from its last epoch checkpoint (model, optimiser, scheduler, queues,
  history, RNG states) and ends with the same record as an uninterrupted run on CPU;
- a checkpoint written by a different config is an error naming the differing settings;
- a method with a pre-pass (``Method.prepare``) gets it computed once, before training, under a seed
  derived from the run's, and cached in the run folder (``prepare.pt``, keyed by the config hash): a
  resumed run loads it instead of recomputing it;
- a loss or parameter that becomes NaN or infinite stops the run at once (``DivergedError``): the last
  good checkpoint stays, no record is written;
- one process at a time trains a run (a lock file in its folder, ``ctlib.engine.lock``); a process that
  waited for another returns that one's record instead of training the run again;
- checkpoints load with ``torch.load(weights_only=True)``; a damaged or foreign file is an error naming
  it and saying what to do.
"""
from __future__ import annotations

import hashlib
import logging
import math
import pickle
import platform
import resource
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..data import build_dataset, eval_view, train_view, training_views
from ..methods import build_method
from ..methods.base import Method, PrepareContext
from ..models import build_backbone
from ..atomic import atomic_write
from ..records import RECORD_NAME, read_record, save_torch_atomic, write_json_atomic
from ..seeding import derived_seed, rng_state, seed_everything, set_rng_state
from .config import RunConfig, config_diff
from .evaluate import evaluate, progress_interval
from .lock import RunLock
from .precision import Precision, train_step
from .sampler import EpochBatches

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
PREPARE_NAME = "prepare.pt"
PREDICTIONS_NAME = "test_predictions.npz"   # per-image test predictions of the last epoch, every head
REPO_ROOT = Path(__file__).resolve().parents[2]   # the checkout, when ctlib runs from one


class ConfigMismatchError(RuntimeError):
    pass


class DivergedError(RuntimeError):
    """The loss (or the parameters) became NaN or infinite: the run stopped, nothing of the epoch was saved."""


class RunFileError(RuntimeError):
    """A checkpoint, model or pre-pass file of a run is damaged or not one; the message says what to do."""


CHECKPOINT_KEYS = ("config_hash", "config", "method", "epoch", "history", "elapsed", "optimizer", "scheduler", "rng")
MODEL_KEYS = ("config_hash", "num_classes", "method")
PREPARE_KEYS = ("config_hash", "time_s", "state")


def _legacy_globals() -> list:
    """What checkpoints written before the RNG state held only tensors need: numpy's RNG key array."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:   # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_run_file(path, what: str, advice: str, map_location="cpu", keys: tuple = ()) -> dict:
    """``torch.load(path, weights_only=True)`` of a file the engine wrote (``what``: 'run checkpoint', ...);
    a damaged file, or one that is not such a file, raises ``RunFileError`` naming it, with ``advice``."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise RunFileError(f"{what} {path} is empty: it was cut short (full disk, interrupted copy). {advice}")
    if magic[:2] != b"PK" and magic[:1] != b"\x80":   # zip (torch.save) or a legacy pickle
        raise RunFileError(f"{path} is not a {what}: it is not a file torch.save wrote. {advice}")
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        if e.filename:        # missing, unreadable: the system's message names the file
            raise
        raise RunFileError(f"{what} {path} cannot be read ({e}). {advice}") from None
    except Exception as e:
        msg = str(e).strip()
        if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in msg:
            # keep torch's diagnosis, not its advice on unsafe loading
            msg = msg.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0].strip()
            raise RunFileError(f"{path} is not a {what}: it holds objects other than tensors, numbers and plain "
                               f"containers ({msg}), so it was not written by ctlib. {advice}") from None
        detail = f"{type(e).__name__}: {msg.splitlines()[0].split('. ')[0] if msg else ''}"
        raise RunFileError(f"{what} {path} is damaged or not a {what} ({detail}); it was probably cut short "
                           f"(full disk, interrupted copy). {advice}") from None
    missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else list(keys)
    if missing or not isinstance(obj, dict):
        raise RunFileError(f"{path} is not a {what} (it lacks {', '.join(missing) or 'a dict'}). {advice}")
    return obj


def run_dir(config: RunConfig) -> Path:
    return Path(config.results_dir) / config.run_id()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but CUDA is not available here; use device='cpu' or 'auto'")
    return dev


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def lock_hash() -> str | None:
    """First 16 hex digits of the sha256 of the repository's requirements.lock; None when ctlib runs
    from somewhere without it (installed elsewhere)."""
    lock = REPO_ROOT / "requirements.lock"
    if not (lock.is_file() and (REPO_ROOT / "pyproject.toml").is_file()):
        return None
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def _versions() -> dict:
    import torchvision
    return {"ctlib": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "requirements_lock": lock_hash()}


class _WithIndex(torch.utils.data.Dataset):
    """Items of ``dataset`` with their index appended: (views, label, index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (*self.dataset[i], i)


class Run:
    """Everything one run builds from its config: data, model, optimiser, schedule."""

    def __init__(self, config: RunConfig):
        c = self.config = config
        self.device = resolve_device(c.device)
        self.precision = Precision.resolve(c.channels_last, c.amp, self.device)
        seed_everything(c.seed)
        backbone = build_backbone(c.backbone, c.pretrained)
        opts = {"download": c.download, "skip_bad_images": c.skip_bad_images, "progress": c.progress}
        vf = c.val_fraction or None
        train = build_dataset(c.dataset, c.data_root, "train", c.sample_rate, seed=c.seed, val_fraction=vf, **opts)
        test = build_dataset(c.dataset, c.data_root, "test", 100, **opts)
        self.num_classes = train.num_classes
        self.method = build_method(c.method, backbone, self.num_classes, c.image_size, c.method_args).to(self.device)
        views = training_views(self.method.view_kinds, c.image_size, backbone.mean, backbone.std, c.hflip,
                               c.color_jitter)
        evalt = eval_view(c.image_size, backbone.mean, backbone.std)
        self.single_view = train_view(c.image_size, "image", backbone.mean, backbone.std, c.hflip, c.color_jitter)
        self.eval_transform = evalt
        self.val = None
        self.test_predictions: dict | None = None   # filled by evaluate(keep_predictions=True)
        if vf:
            self.val = build_dataset(c.dataset, c.data_root, "val", c.sample_rate, evalt, c.seed, val_fraction=vf,
                                     **opts)
        self.train = train.with_transform(views)
        self.test = test.with_transform(evalt)
        groups = self.method.param_groups(c.lr, c.backbone_lr_mult)
        self.optimizer = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                         nesterov=True)
        if c.schedule == "multistep":
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(c.milestones), c.lr_gamma)
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, c.epochs)

    def data_info(self) -> dict:
        return {"train_images": len(self.train), "test_images": len(self.test),
                "val_images": len(self.val) if self.val is not None else 0, "num_classes": self.num_classes,
                "train_class_counts": self.train.class_counts(), "train": self.train.info}

    def loader(self, epoch: int) -> DataLoader:
        c = self.config
        sampler = EpochBatches(len(self.train), c.batch_size, c.seed, epoch, c.iters_per_epoch)
        gen = torch.Generator().manual_seed(derived_seed(c.seed, epoch, 0x10AD))   # worker seeds
        data = _WithIndex(self.train) if self.method.needs_index else self.train
        return DataLoader(data, batch_sampler=sampler, num_workers=c.num_workers, generator=gen,
                          pin_memory=self.device.type == "cuda")

    def prepare_context(self) -> PrepareContext:
        c = self.config
        return PrepareContext(dataset=self.train, train_transform=self.single_view, eval_transform=self.eval_transform,
                              device=self.device, batch_size=c.batch_size, seed=c.seed, lr=c.lr,
                              weight_decay=c.weight_decay, backbone_lr_mult=c.backbone_lr_mult, momentum=c.momentum,
                              num_workers=c.num_workers, progress=c.progress)

    def prepare(self, path: Path) -> dict | None:
        """Run the method's pre-pass, or load it from ``path`` when it was written for this config;
        hand the result to the method. Returns what the record says about it (None: no pre-pass)."""
        method = self.method
        if type(method).prepare is Method.prepare:
            return None
        cached = None
        if path.exists():
            cached = load_run_file(path, "pre-pass cache", "Delete it: the pre-pass is computed again (it is seeded: "
                                   "same result).", keys=PREPARE_KEYS)
            if cached.get("config_hash") != self.config.hash():
                log.info("ignoring %s: written by another config", path)
                cached = None
        if cached is None:
            saved = rng_state()   # the pre-pass must not shift training's random stream (cached or not)
            seed_everything(derived_seed(self.config.seed, 0x9E9A55))
            t0 = time.time()
            try:
                state = method.prepare(self.prepare_context())
            finally:
                set_rng_state(saved)
                method.train()
            elapsed = round(time.time() - t0, 2)
            if state is None:
                return None
            state = {k: v.detach().cpu() for k, v in state.items()}
            save_torch_atomic({"config_hash": self.config.hash(), "time_s": elapsed, "state": state}, path)
            info = {"time_s": elapsed, "cached": False}
        else:
            state = cached["state"]
            info = {"time_s": cached["time_s"], "cached": True}
        method.set_prepared(state)
        return info

    def train_epoch(self, epoch: int) -> dict:
        c, method = self.config, self.method
        method.train()
        sums: dict[str, float] = {}
        bar = tqdm(self.loader(epoch), total=c.iters_per_epoch, desc=f"{c.method} epoch {epoch + 1}/{c.epochs}",
                   disable=not c.progress, leave=False, mininterval=progress_interval())
        for step, batch in enumerate(bar, 1):
            views = [v.to(self.device, non_blocking=True) for v in batch[0]]
            labels = batch[1].to(self.device, non_blocking=True)
            extra = {"index": batch[2].to(self.device, non_blocking=True)} if method.needs_index else {}
            loss, out = train_step(method, self.optimizer, self.precision, views, labels, epoch, extra)
            value = loss.item()
            out.setdefault("total", value)
            parts = {k: float(v) for k, v in out.items()}
            if not (math.isfinite(value) and all(math.isfinite(v) for v in parts.values())):   # host values only
                bar.close()
                shown = ", ".join(f"{k}={v:.6g}" for k, v in {"loss": value, **parts}.items())
                raise DivergedError(self._diverged(epoch, step, f"the loss is not finite ({shown})"))
            self.precision.step(self.optimizer)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{out['total']:.3f}", refresh=False)   # refreshed at the bar's interval
        # the last step's update is seen by no loss of this epoch: check the parameters once per epoch
        named = [(n, p) for n, p in method.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist() if named else []
        if not all(finite):
            bad = [n for (n, _), ok in zip(named, finite) if not ok]
            raise DivergedError(self._diverged(epoch, c.iters_per_epoch, f"after its update, {len(bad)} parameters "
                                               f"are not finite ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})"))
        return {k: round(v / c.iters_per_epoch, 6) for k, v in sums.items()}

    def _diverged(self, epoch: int, step: int, what: str) -> str:
        c = self.config
        ckpt = run_dir(c) / CHECKPOINT_NAME
        if epoch > 0 and ckpt.exists():
            kept = (f"the checkpoint of epoch {epoch} ({ckpt}) is kept and no record was written; fitting this run "
                    f"again resumes from that checkpoint (delete it to restart the run from scratch)")
        else:
            kept = "no epoch had finished, so no checkpoint or record was written"
        return (f"run {c.run_id()} diverged at epoch {epoch + 1}, step {step}/{c.iters_per_epoch} (global step "
                f"{epoch * c.iters_per_epoch + step}): {what}. The run stopped: {kept}. A lower learning rate or "
                f"other method settings (a new run) may avoid it.")

    def evaluate(self, keep_predictions: bool = False) -> dict:
        """Metrics of every head on the test (and validation) split; with ``keep_predictions`` the test
        split's per-image predictions are kept in ``self.test_predictions``."""
        c = self.config
        splits = {"test": self.test, "val": self.val}
        out = {}
        for name, ds in splits.items():
            if ds is None:
                continue
            keep = {} if keep_predictions and name == "test" else None
            out[name] = evaluate(self.method, ds, self.device, c.eval_batch_size, c.num_workers, c.progress, name, keep,
                                 self.precision)
            if keep is not None:
                self.test_predictions = keep
        return out


    def model_state(self) -> dict:
        """What ``load_model`` needs: the trained method and what identifies it."""
        return {"config_hash": self.config.hash(), "config": self.config.identity(), "num_classes": self.num_classes,
                "method": self.method.state_dict()}

    def state(self, epoch: int, history: list, elapsed: float, train_times: list) -> dict:
        """The full state an interrupted run resumes from."""
        return {**self.model_state(), "epoch": epoch, "history": history, "elapsed": elapsed,
                "train_times": train_times,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.precision.state_dict(), "rng": rng_state()}

    def load_state(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
        set_rng_state(state["rng"])


def final_metrics(history: list, note: str | None = None) -> dict:
    """Final numbers under each reporting protocol (METHOD.md Decision 10), each labelled; ``note`` says
    how the evaluation departs from the reference code (added to the reference protocol's label)."""
    last = history[-1]
    best = max(((h["test"][head]["top1"], -h["epoch"], head, h) for h in history for head in h["test"]),
               key=lambda t: t[:2])
    out = {"reference": {**best[3]["test"][best[2]], "epoch": best[3]["epoch"], "head": best[2],
                         "protocol": "max over heads and epochs of test top-1 (reference code)"
                                     + (f"; {note}" if note else "")},
           "main_last": {**last["test"]["main"], "epoch": last["epoch"], "head": "main",
                         "protocol": "main head, last epoch"}}
    if "val" in last:
        sel = max(history, key=lambda h: (h["val"]["main"]["top1"], -h["epoch"]))
        out["val_selected"] = {**sel["test"]["main"], "epoch": sel["epoch"], "head": "main",
                               "protocol": "main head, epoch with best validation top-1"}
    return out


def _timing(train_times: list, elapsed: float, config: RunConfig) -> dict:
    """Training and evaluation seconds of the run (the pre-pass is timed in ``prepare``); per step: the
    training seconds over the steps (an epoch's data loading included)."""
    train = sum(train_times)
    steps = config.epochs * config.iters_per_epoch
    return {"train_s": round(train, 2), "eval_s": round(max(0.0, elapsed - train), 2), "steps": steps,
            "step_s": round(train / steps, 4) if len(train_times) == config.epochs else None}


def _peak_memory_mb(device: torch.device) -> dict:
    mem = {"cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        mem["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return mem


def _finished_record(config: RunConfig, record_path: Path) -> dict | None:
    """The run's record when it is finished (a damaged record raises ``RecordError`` naming it)."""
    if record_path.exists():
        rec = read_record(record_path)
        if rec.get("config_hash") == config.hash():
            return rec
    return None


def fit(config: RunConfig | dict, stop_after_epoch: int | None = None, on_epoch=None) -> dict | None:
    """Train and evaluate one run; returns its record. ``stop_after_epoch`` ends the process of training
    after that many epochs with the checkpoint written, as a kill would (for tests); it returns None.
    ``on_epoch(epoch)`` is called after each epoch trained here is saved (1-based; e.g. a grid's progress bar).

    While it trains, the run folder is locked (``ctlib.engine.lock``): a run another live process trains
    is waited for up to ``config.lock_timeout`` seconds, then ``RunLockedError``; once the lock is taken,
    a run that process finished meanwhile is returned, not trained again."""
    config = RunConfig.from_dict(config) if isinstance(config, dict) else config
    out = run_dir(config)
    record_path = out / RECORD_NAME
    rec = _finished_record(config, record_path)
    if rec is not None:
        log.info("run %s already finished: %s", config.run_id(), record_path)
        return rec
    with RunLock(out, config.lock_timeout):
        rec = _finished_record(config, record_path)
        if rec is not None:
            log.info("run %s was finished by another process meanwhile: %s", config.run_id(), record_path)
            return rec
        return _train(config, out, stop_after_epoch, on_epoch)


def _train(config: RunConfig, out: Path, stop_after_epoch: int | None, on_epoch=None) -> dict | None:
    """``fit`` under the run's lock."""
    record_path, ckpt_path, prepare_path = out / RECORD_NAME, out / CHECKPOINT_NAME, out / PREPARE_NAME
    run = Run(config)
    history: list = []
    start, elapsed = 0, 0.0
    train_times: list = []        # seconds of training (no evaluation) per epoch
    state = None
    if ckpt_path.exists():
        state = load_run_file(ckpt_path, "run checkpoint", f"Delete it to restart the run from scratch (its "
                              f"{config.epochs}-epoch training starts over; nothing else in {out} is affected).",
                              run.device, CHECKPOINT_KEYS)
    if state is not None and state["config_hash"] != config.hash():
        raise ConfigMismatchError(f"checkpoint {ckpt_path} was written by a different config; differing "
                                  f"settings (checkpoint, now): {config_diff(state['config'], config.identity())}."
                                  " Delete the run folder to start over.")
    prepare_info = run.prepare(prepare_path)   # before the checkpoint is loaded: the pre-pass sees the initial model
    if state is not None:
        run.load_state(state)
        start, history, elapsed = state["epoch"], state["history"], state["elapsed"]
        train_times = list(state.get("train_times", []))
        log.info("resuming %s after epoch %d", config.run_id(), start)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    for epoch in range(start, config.epochs):
        t0 = time.time()
        lrs = [g["lr"] for g in run.optimizer.param_groups]
        train_parts = run.train_epoch(epoch)
        train_times.append(time.time() - t0)
        run.scheduler.step()
        metrics = run.evaluate(keep_predictions=epoch + 1 == config.epochs)
        elapsed += time.time() - t0
        history.append({"epoch": epoch + 1, "lr": lrs, "train": train_parts, **metrics})
        save_torch_atomic(run.state(epoch + 1, history, elapsed, train_times), ckpt_path)
        if on_epoch is not None:
            on_epoch(epoch + 1)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            return None
    if run.test_predictions is None:             # resumed after the last epoch: predict again
        run.evaluate(keep_predictions=True)
    save_predictions(run.test_predictions, out / PREDICTIONS_NAME)
    record = {"schema": 1, "run_id": config.run_id(), "recipe": config.recipe or None,
              "config": asdict(config), "method_settings": config.identity()["method_args"],
              "config_hash": config.hash(),
              "versions": _versions(), "git_commit": _git_commit(), "device": str(run.device),
              "precision": run.precision.describe(),
              "data": run.data_info(), "history": history, "final": final_metrics(history, run.method.protocol_note()),
              "wall_time_s": round(elapsed, 2), "timing": _timing(train_times, elapsed, config),
              "peak_memory": _peak_memory_mb(run.device),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if prepare_info is not None:
        record["prepare"] = prepare_info
    record["test_predictions"] = {"file": PREDICTIONS_NAME, "epoch": config.epochs,
                                  "heads": sorted(k for k in run.test_predictions if k != "target")}
    write_json_atomic(record_path, record)
    if config.keep_checkpoint == "model":
        save_torch_atomic(run.model_state(), out / MODEL_NAME)
    if config.keep_checkpoint != "full":
        ckpt_path.unlink(missing_ok=True)
        prepare_path.unlink(missing_ok=True)
    return record


def save_predictions(predictions: dict, path: Path) -> None:
    """Per-image test predictions of every head (and the labels) as a numpy ``.npz``, atomically."""
    import numpy as np

    arrays = {k: v.numpy().astype(np.int32) for k, v in predictions.items()}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_predictions(config: RunConfig | dict) -> dict:
    """{head: predicted class per test image, "target": labels} of a finished run (last epoch)."""
    import numpy as np

    config = RunConfig.from_dict(config) if isinstance(config, dict) else config
    path = run_dir(config) / PREDICTIONS_NAME
    if not path.exists():
        raise FileNotFoundError(f"no test predictions for run {config.run_id()} at {path} (an unfinished run, or "
                                "one recorded before runs saved them: delete its record.json to train it again)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_model(config: RunConfig | dict, device: str = "cpu"):
    """The trained method of a finished run (needs keep_checkpoint 'model' or 'full')."""
    config = RunConfig.from_dict(config) if isinstance(config, dict) else config
    out = run_dir(config)
    path = out / MODEL_NAME if (out / MODEL_NAME).exists() else out / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no saved model for run {config.run_id()} in {out}")
    state = load_run_file(path, "saved model", f"Delete it and {out / RECORD_NAME} to train the run again.",
                          device, MODEL_KEYS)
    backbone = build_backbone(config.backbone, False)
    if any(".source_head." in k for k in state["method"]):  # the run had an ImageNet classifier: make room
        backbone.source_head = torch.nn.Linear(backbone.channels, 1000)
    method = build_method(config.method, backbone, state["num_classes"], config.image_size, config.method_args)
    method.load_state_dict(state["method"])
    return method.to(device).eval()
