"""Backbone weight files: MoCo training checkpoints, converted backbones, torchvision state dicts.

Three kinds of file are accepted as ``pretrained=<path>`` (BASELINES.md §1.9):

* a MoCo v1/v2 training checkpoint as facebookresearch/moco saves it: ``{"state_dict": {...}, ...}``
  with keys ``module.encoder_q.<torchvision key>``; the key encoder (``module.encoder_k.*``) and the
  queue (``module.queue*``) are dropped, and ``encoder_q``'s ``fc`` is MoCo's projection (v1: 128-d
  Linear; v2: ``fc.0``/``fc.2`` MLP), never a class head;
* a converted backbone (``ctlib convert-moco``, or TLlib's convert_moco_to_pretrained.py): plain
  torchvision keys without ``fc``;
* a plain torchvision state dict, with its 1000-way ``fc``, which becomes ``Backbone.source_head``.

Unlike TLlib (which loads non-strictly and silently keeps supervised weights for keys that do not
match), the body is loaded strictly: missing, unexpected or mis-shaped keys are a
``PretrainedWeightsError`` naming them. Only the ``fc`` slot may be absent.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import atomic_write

log = logging.getLogger(__name__)

MOCO_PREFIX = "module.encoder_q."
HEAD_PREFIXES = ("fc.", "_fc.")      # torchvision ResNet / efficientnet_lite_pytorch classifier slot
IMAGENET_CLASSES = 1000


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights cannot be had (offline and not cached, or a checkpoint that does not fit)."""


@dataclass
class BackboneWeights:
    """A weight file, read: ``body`` (network keys without the classifier slot), ``fc`` (the
    ``fc.*``/``_fc.*`` keys: a classifier, or MoCo's projection), ``dropped`` (keys of a MoCo file
    outside ``encoder_q``: key encoder, queue)."""
    path: Path
    kind: str                                    # "moco" or "state_dict"
    body: dict = field(default_factory=dict)
    fc: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    arch: str | None = None                      # a MoCo checkpoint's "arch" entry

    def class_head(self, channels: int) -> nn.Linear | None:
        """The ImageNet 1000-way classifier in this file, or None (MoCo projection, no fc, other shape)."""
        if self.kind == "moco" or not self.fc:
            return None
        named = {k.lstrip("_"): v for k, v in self.fc.items()}   # "fc.weight" or "_fc.weight"
        if set(named) != {"fc.weight", "fc.bias"} or tuple(named["fc.weight"].shape) != (IMAGENET_CLASSES, channels) \
                or tuple(named["fc.bias"].shape) != (IMAGENET_CLASSES,):
            return None
        head = nn.Linear(channels, IMAGENET_CLASSES)
        head.load_state_dict({"weight": named["fc.weight"], "bias": named["fc.bias"]})
        return head


def _names(keys) -> str:
    keys = list(keys)
    shown = repr(keys[:12])
    return shown if len(keys) <= 12 else f"{shown} and {len(keys) - 12} more"


def summarize(keys) -> str:
    """'module.encoder_k.* (122 keys), module.queue, module.queue_ptr': keys grouped by their first two parts."""
    groups: dict[str, list] = {}
    for k in keys:
        groups.setdefault(".".join(k.split(".")[:2]), []).append(k)
    return ", ".join(g[0] if len(g) == 1 else f"{p}.* ({len(g)} keys)" for p, g in groups.items()) or "nothing"


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``, with a plain error naming the file when it is not one."""
    if not path.is_file():
        raise PretrainedWeightsError(f"backbone checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in msg:
            # keep torch's diagnosis, not its advice on unsafe loading
            msg = msg.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0].strip()
        detail = f"{type(e).__name__}: {msg.strip().splitlines()[0] if msg.strip() else ''}"
        raise PretrainedWeightsError(f"{path} is not a PyTorch weights file: it is not something torch.save wrote, "
                                     f"or it holds objects other than tensors and plain containers "
                                     f"(torch.load with weights_only=True: {detail})") from None


def _state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{path} holds a {type(obj).__name__}, not a state dict "
                                     f"(a dict of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise PretrainedWeightsError(f"{path} is not a state dict: entries {_names(bad)} are not tensors "
                                     f"(top-level keys: {_names(obj)})")
    return obj


def _split_fc(state: dict) -> tuple[dict, dict]:
    body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    return body, {k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}


def read_weights(path) -> BackboneWeights:
    """Read any of the accepted files (module docstring) into a ``BackboneWeights``."""
    path = Path(path)
    obj = _torch_load(path)
    return _weights(path, _state_dict(obj, path), obj.get("arch") if isinstance(obj, dict) else None)


def _weights(path: Path, state: dict, arch=None) -> BackboneWeights:
    if any(k.startswith(MOCO_PREFIX) for k in state):
        query = {k[len(MOCO_PREFIX):]: v for k, v in state.items() if k.startswith(MOCO_PREFIX)}
        body, fc = _split_fc(query)
        dropped = [k for k in state if not k.startswith(MOCO_PREFIX)]
        return BackboneWeights(path, "moco", body, fc, dropped, arch if isinstance(arch, str) else None)
    # "body.…": a file of Backbone.body saved through the Backbone
    body, fc = _split_fc({k.removeprefix("body."): v for k, v in state.items()})
    return BackboneWeights(path, "state_dict", body, fc)


def load_backbone_checkpoint(backbone, path) -> None:
    """Load a weight file into ``backbone.body`` strictly; set ``source_head`` to the file's ImageNet
    1000-way classifier or None, and ``backbone.pretrained`` to what was loaded."""
    w = read_weights(path)
    own = backbone.body.state_dict()
    state = w.body
    if own and all(k.startswith("net.") for k in own) and not any(k.startswith("net.") for k in state):
        state = {"net." + k: v for k, v in state.items()}    # EfficientNet keys as the package spells them
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise PretrainedWeightsError(
            f"checkpoint {w.path} does not fit {backbone.name}: missing keys {_names(missing)}; "
            f"unexpected keys {_names(unexpected)}" + (f"; wrong shapes {_names(shapes)}" if shapes else "")
            + (f" (the checkpoint says arch={w.arch!r})" if w.arch and w.arch != backbone.name else ""))
    backbone.body.load_state_dict(state, strict=True)
    backbone.source_head = w.class_head(backbone.channels)
    if w.kind == "moco":
        log.info("%s: MoCo checkpoint, loaded encoder_q (%d tensors); its fc %s is MoCo's projection, not a "
                 "class head: not loaded, source_head=None; dropped %s",
                 w.path, len(state), sorted(w.fc), summarize(w.dropped))
    elif backbone.source_head is None:
        log.info("%s: no ImageNet 1000-way classifier in the file%s: source_head=None", w.path,
                 f" (fc keys {sorted(w.fc)} not used)" if w.fc else "")
    backbone.pretrained = f"moco:{w.path}" if w.kind == "moco" else str(w.path)


def convert_moco(src, dest, keep_fc: bool = False) -> dict:
    """Write ``src``'s query encoder as a torchvision-keyed backbone state dict (``fc`` only with
    ``keep_fc``); return {"kept": [...], "fc": [...], "dropped": [...]} (``fc``: the projection keys)."""
    src = Path(src)
    obj = _torch_load(src)
    state = _state_dict(obj, src)
    if not any(k.startswith(MOCO_PREFIX) for k in state):
        what = f"top-level keys {_names(obj)}" if isinstance(obj, dict) and "state_dict" not in obj \
            else f"state_dict keys {_names(state)}"
        raise PretrainedWeightsError(f"{src} has no '{MOCO_PREFIX}' keys, so it is not a MoCo training "
                                     f"checkpoint; it has {what}")
    w = _weights(src, state)
    out = {**w.body, **(w.fc if keep_fc else {})}
    atomic_write(dest, lambda f: torch.save(out, f))
    return {"kept": list(out), "fc": sorted(w.fc), "dropped": w.dropped}
