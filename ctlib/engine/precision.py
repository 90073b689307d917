"""How a run computes: memory layout (channels-last) and automatic mixed precision, as run settings.

Two ``RunConfig`` settings, resolved against the device the run trains on:

- ``channels_last``: ``"auto"`` (default: on for CPU and CUDA, where it was measured faster, see
  benchmarks/README.md; off elsewhere), ``True`` or ``False``. It lays out the full-image inputs (and so every
  feature map computed from them, and Concept-Tuning's crops) channels-last. The weights keep their layout
  (oneDNN and cuDNN pick the convolution's layout from the input).
- ``amp``: ``"auto"`` (default: on CUDA, bfloat16 where the GPU supports it, else float16 with a gradient
  scaler; off elsewhere), ``"off"`` (float32), ``"bf16"`` or ``"fp16"`` (float16 always with a gradient
  scaler). bf16 and fp16 may be asked for on the CPU too (slower there on most CPUs; useful for tests).

``channels_last=False, amp="off"`` computes exactly as the authors' float32 code. ``Precision`` applies the
resolved settings to one training step: the engine (``Run.train_epoch``) and benchmarks/step_time.py both go
through ``train_step``, and a method that back-propagates part of its loss itself (Concept-Tuning) calls
``precision.backward(loss)`` so that a gradient scaler scales every part.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CHANNELS_LAST = ("auto", True, False)
AMP = ("auto", "off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: device types on which "auto" turns channels-last on (measured faster there)
CHANNELS_LAST_DEVICES = ("cpu", "cuda")


def resolve_channels_last(setting, device: torch.device) -> bool:
    if setting not in CHANNELS_LAST:
        raise ValueError(f"channels_last must be one of {list(CHANNELS_LAST)}, got {setting!r}")
    return device.type in CHANNELS_LAST_DEVICES if setting == "auto" else bool(setting)


def resolve_amp(setting: str, device: torch.device) -> str:
    """'off', 'bf16' or 'fp16' for ``setting`` on ``device``."""
    if setting not in AMP:
        raise ValueError(f"amp must be one of {list(AMP)}, got {setting!r}")
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@dataclass
class Precision:
    """The resolved settings of a run on its device, and what they do to a training step."""
    device: torch.device
    channels_last: bool = False
    amp: str = "off"

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

    @classmethod
    def resolve(cls, channels_last, amp: str, device) -> "Precision":
        device = torch.device(device)
        return cls(device, resolve_channels_last(channels_last, device), resolve_amp(amp, device))

    @property
    def faithful(self) -> bool:
        """Computes as the authors' float32 code (contiguous layout, no autocast)."""
        return not self.channels_last and self.amp == "off"

    def describe(self) -> dict:
        return {"channels_last": self.channels_last, "amp": self.amp}

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images laid out as the run computes (4-D tensors only)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        return torch.autocast(self.device.type, dtype=_DTYPES.get(self.amp), enabled=self.amp != "off")

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)     # skipped when a gradient is not finite; the scale then shrinks
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def train_step(method, optimizer, precision: Precision, views, labels, epoch: int, extra: dict | None = None):
    """One training step as the engine runs it: (loss tensor, the method's other outputs). The caller checks
    the loss and calls ``precision.step(optimizer)``."""
    method.precision = precision
    optimizer.zero_grad(set_to_none=True)
    views = [precision.images(v) for v in views]
    with precision.autocast():
        out = method.training_step(views, labels, epoch, **(extra or {}))   # may back-propagate parts itself
    loss = out.pop("loss")
    precision.backward(loss)
    return loss, out
