"""A short training run from ImageNet-pretrained EfficientNet-Lite0 on the embedded demo data (for tests
that check a method lowers its loss)."""
import torch
from torch.utils.data import DataLoader

from ctlib.data import build_dataset, training_views
from ctlib.methods import build_method
from ctlib.models import build_backbone
from ctlib.seeding import seed_everything


def short_run_losses(method: str, settings: dict, part: str, steps: int = 30, weight_decay: float = 5e-4) -> list:
    """``out[part]`` of each of ``steps`` SGD steps (batch 16, 64 px, 15 % of the demo training set)."""
    seed_everything(0)
    bb = build_backbone("efficientnet_lite0", True)
    m = build_method(method, bb, 10, 64, settings).train()
    data = build_dataset("demo", split="train", sample_rate=15,
                         transform=training_views(m.view_kinds, 64, bb.mean, bb.std))
    opt = torch.optim.SGD(m.param_groups(0.01, 0.1), lr=0.01, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    loader = DataLoader(data, batch_size=16, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    losses = []
    while len(losses) < steps:
        for views, labels in loader:
            opt.zero_grad()
            out = m.training_step(views, labels, epoch=0)
            out["loss"].backward()
            opt.step()
            losses.append(out[part])
            if len(losses) == steps:
                break
    return losses
