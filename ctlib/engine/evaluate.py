"""Evaluation of every head of a method: top-1 and mean per-class accuracy."""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: frequent on a terminal, sparse where every refresh is
    kept (notebook outputs, log files)."""
    return 0.1 if sys.stderr.isatty() else 5.0


def accuracy_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Top-1 (%) and mean per-class accuracy (%, over the classes present in ``target``)."""
    correct = (pred == target).float()
    per_class_n = torch.bincount(target, minlength=num_classes).float()
    per_class_ok = torch.bincount(target, weights=correct, minlength=num_classes)
    present = per_class_n > 0
    return {"top1": round(100.0 * correct.mean().item(), 4),
            "mean_class": round(100.0 * (per_class_ok[present] / per_class_n[present]).mean().item(), 4)}


@torch.no_grad()
def evaluate(method, dataset, device, batch_size: int = 100, num_workers: int = 0, progress: bool = False,
             desc: str = "eval", predictions: dict | None = None, precision=None) -> dict:
    """{head: {"top1", "mean_class"}} for every head of ``method`` on ``dataset``. A ``predictions`` dict is
    filled with each head's predicted class per image (in dataset order) and the labels (``"target"``).
    ``precision`` (``engine.precision.Precision``): the run's layout and autocast (default: as given, float32)."""
    from .precision import Precision

    precision = precision or Precision(torch.device(device))
    was = method.training
    method.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    preds: dict[str, list] = {}
    targets = []
    try:
        with torch.no_grad():   # no autograd graph: evaluation only reads the heads
            for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress,
                                       mininterval=progress_interval()):
                with precision.autocast():
                    heads = method.heads(precision.images(images.to(device)))
                for name, logits in heads.items():
                    preds.setdefault(name, []).append(logits.argmax(1).cpu())
                targets.append(labels)
    finally:
        method.train(was)
    target = torch.cat(targets)
    if predictions is not None:
        predictions.update({name: torch.cat(p) for name, p in preds.items()}, target=target)
    return {name: accuracy_metrics(torch.cat(p), target, dataset.num_classes) for name, p in preds.items()}
