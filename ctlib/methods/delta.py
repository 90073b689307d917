"""DELTA (TLlib delta.py, BASELINES.md §2.5): keep the fine-tuned network's intermediate feature maps
close to those of the frozen source network, weighted per channel by an attention computed once.

State: the new head, and a frozen copy of the initial backbone (the source model: no gradient, always
in eval mode, a submodule so it is checkpointed).

Hooked layers (``hook_points``), the pre-BN output of the last block of each stage:
- ResNet-50/101/152 (Bottleneck): ``layerK[-1].conv3`` (for resnet50 exactly TLlib's
  ``layer1.2.conv3, layer2.3.conv3, layer3.5.conv3, layer4.2.conv3``; for resnet101 TLlib hooks
  ``layer3.5``, which is not the stage's last block: we hook the last one, ``layer3.22``);
- ResNet-18/34 (BasicBlock): ``layerK[-1].conv2``;
- EfficientNet-Lite0: the projection conv (``_project_conv``, before its BN and the skip) of the last
  block at each of the strides 4, 8, 16 and 32 (blocks 2, 4, 10 and 15: 24, 40, 112, 320 channels).

Loss: CE(y, t) + trade_off_backbone · Ω + trade_off_head · ½(‖W_head‖² + ‖b_head‖²), with
- ``attention_feature_map`` (TLlib default):
  Ω = Σ_l ½ Σ_b Σ_c (C_l a_{l,c} / (H_l W_l)) ‖FM^t_{l,b,c} − sg(FM^s_{l,b,c})‖² (a sum over the batch, as TLlib);
- ``feature_map``: Ω = Σ_l ½ ‖FM^t_l − sg(FM^s_l)‖² over the whole batch tensor.

Pre-pass (``prepare``, attention only): train a copy of the initial network with a new head on the
training set (``attention_epochs`` passes at batch ``attention_batch_size``, SGD-Nesterov with the run's
lr, backbone multiplier, momentum and weight decay, lr ×0.1 per ``attention_lr_decay_epochs`` passes),
then in eval mode ablate every hooked channel on the first ``attention_iteration_limit`` batches of a new
shuffled pass: Δ_{l,j} = mean over batches of CE(channel j of layer l zeroed) − CE(intact);
a_l = softmax(((Δ_l − mean) / population std) / 5). The ablations are batched: a pre-hook repeats the
hooked block's input once per ablated channel and a forward hook zeroes channel j in copy j, which is
exact in eval mode (BN uses running statistics, samples do not interact).

TLlib quirks, reproduced by default:
- its pre-pass "freezes" the backbone with a plain attribute, which freezes nothing: the whole network
  trains (``attention_freeze_backbone=False``); True freezes it as intended (backbone parameters fixed,
  its BN in eval mode, only the head trains);
- its pre-pass always starts from the supervised ImageNet weights, ignoring ``--pretrained``
  (``attention_init="supervised"``: a run from a backbone checkpoint, e.g. MoCo, gets its attention from
  the ImageNet weights; ImageNet and random-init runs use their own initial weights);
  ``attention_init="run"`` always starts from the run's initial backbone;
- ``--attention-iteration-limit -1`` crashes in TLlib; here -1 means every batch of the pass.
A layer whose Δ are all equal (std 0; NaN in TLlib) gets uniform attention.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..models import build_backbone
from ..seeding import derived_seed
from ..validation import check_settings, choice, flag, integer, is_int, real
from .base import Method, pooled

REGULARIZATIONS = ("attention_feature_map", "feature_map")
ATTENTION_INITS = ("supervised", "run")
ABLATION_IMAGES = 512   # images per forward pass of the batched channel ablation (speed only)


@dataclass
class DELTASettings:
    trade_off_backbone: float = 0.01        # α, weight of the feature-map term
    trade_off_head: float = 0.01            # β, weight of ½‖head‖² (weight and bias)
    regularization: str = "attention_feature_map"   # or "feature_map" (no attention, no pre-pass)
    attention_epochs: int = 10              # passes over the training set in the attention pre-pass
    attention_batch_size: int = 32
    attention_lr_decay_epochs: int = 6      # lr ×0.1 after this many passes (exponential per pass)
    attention_iteration_limit: int = 10     # batches used for the ablation; -1: all (crashes in TLlib)
    attention_freeze_backbone: bool = False  # TLlib's freeze is a no-op (False); True freezes as intended
    attention_init: str = "supervised"      # "supervised": TLlib's ImageNet start for checkpoint runs; "run"

    def __post_init__(self):
        limit = self.attention_iteration_limit
        check_settings("delta", [
            real("trade_off_backbone", self.trade_off_backbone, 0), real("trade_off_head", self.trade_off_head, 0),
            choice("regularization", self.regularization, REGULARIZATIONS),
            integer("attention_epochs", self.attention_epochs, 0),
            integer("attention_batch_size", self.attention_batch_size, 1),
            integer("attention_lr_decay_epochs", self.attention_lr_decay_epochs, 1),
            ("attention_iteration_limit", limit, is_int(limit) and (limit >= 1 or limit == -1),
             "an integer >= 1, or -1 (every batch)"),
            flag("attention_freeze_backbone", self.attention_freeze_backbone),
            choice("attention_init", self.attention_init, ATTENTION_INITS)])


def hook_points(backbone) -> list[tuple[nn.Module, nn.Module]]:
    """(block, layer) per hooked stage: ``layer`` is hooked, ``block`` is the block that contains it."""
    body = backbone.body
    if hasattr(body, "layer4"):    # torchvision ResNet
        blocks = [getattr(body, f"layer{k}")[-1] for k in (1, 2, 3, 4)]
        return [(b, b.conv3 if hasattr(b, "conv3") else b.conv2) for b in blocks]
    if hasattr(body, "net") and hasattr(body.net, "_blocks"):   # EfficientNet(-Lite)
        groups: list[list] = []
        for blk in body.net._blocks:
            s = blk._block_args.stride
            s = s[0] if isinstance(s, (list, tuple)) else s
            if not groups or s > 1:
                groups.append([])
            groups[-1].append(blk)
        return [(g[-1], g[-1]._project_conv) for g in groups[-4:]]
    raise ValueError(f"delta: no hooked layers defined for backbone {getattr(backbone, 'name', type(body).__name__)!r}")


@contextlib.contextmanager
def capture(layers):
    """Collect the outputs of ``layers`` (in the given order) during the forward passes inside."""
    out: list = [None] * len(layers)

    def hook(k):
        def fn(module, args, output):
            out[k] = output
        return fn

    handles = [layer.register_forward_hook(hook(k)) for k, layer in enumerate(layers)]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


class _Classifier(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels, num_classes)

    def forward(self, x):
        return self.head(pooled(self.backbone(x)))


@torch.no_grad()
def ablation_losses(model: nn.Module, block: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    chunk: int = ABLATION_IMAGES) -> torch.Tensor:
    """Mean CE of ``model`` (in eval mode) on (x, y) with output channel j of ``layer`` zeroed, for every j."""
    n, channels = x.shape[0], layer.out_channels
    per_pass = max(1, chunk // n)
    losses = []
    for c0 in range(0, channels, per_pass):
        k = min(per_pass, channels - c0)
        mask = torch.ones(k, 1, channels, 1, 1, device=x.device)
        mask[torch.arange(k), 0, c0 + torch.arange(k)] = 0

        def repeat(module, args, k=k):
            return (args[0].repeat(k, *([1] * (args[0].dim() - 1))),) + tuple(args[1:])

        def zero(module, args, output, k=k, mask=mask):
            return (output.view(k, n, *output.shape[1:]) * mask.to(output.dtype)).view_as(output)

        handles = [block.register_forward_pre_hook(repeat), layer.register_forward_hook(zero)]
        try:
            logits = model(x)
        finally:
            for h in handles:
                h.remove()
        losses.append(F.cross_entropy(logits, y.repeat(k), reduction="none").view(k, n).mean(1))
    return torch.cat(losses)


def normalise_attention(delta: torch.Tensor) -> torch.Tensor:
    """softmax(z / 5) with z the standardised Δ (population std); uniform when every Δ is equal."""
    delta = delta.double()
    std = delta.std(unbiased=False)
    z = (delta - delta.mean()) / std if std > 0 else torch.zeros_like(delta)
    return F.softmax(z / 5, dim=0).float()


class DELTA(Method):
    name = "delta"
    view_kinds = ("image",)
    Settings = DELTASettings

    def __init__(self, backbone, num_classes: int, image_size: int = 224, settings: DELTASettings | None = None):
        super().__init__()
        self.settings = settings or DELTASettings()
        self.backbone = backbone
        self.head = nn.Linear(backbone.channels, num_classes)   # PyTorch default init, as TLlib
        self.num_classes = num_classes
        self.source = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.source.source_head = None   # TLlib's source model carries an (unused) ImageNet head: dropped
        self.channels = [layer.out_channels for _, layer in hook_points(backbone)]
        # the pre-pass result, one weight per hooked channel, layers concatenated; not in the state dict
        # (the engine keeps it in the run's prepare.pt)
        self.register_buffer("attention", torch.empty(0), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.source.eval()      # the source model always uses its running BN statistics
        return self

    def param_groups(self, lr, backbone_lr_mult):
        return [{"params": list(self.backbone.body.parameters()), "lr": lr * backbone_lr_mult},
                {"params": list(self.head.parameters()), "lr": lr}]

    # ---- pre-pass: channel attention --------------------------------------------------------------
    def prepare(self, ctx):
        s = self.settings
        if s.regularization != "attention_feature_map":
            return None
        init = self.source
        ckpt = isinstance(init.pretrained, str) and init.pretrained not in ("imagenet", "none", "")
        if s.attention_init == "supervised" and ckpt:
            init = build_backbone(init.name, True)
        model = _Classifier(copy.deepcopy(init).requires_grad_(True), self.num_classes).to(ctx.device)
        loader = ctx.loader(ctx.train_transform, s.attention_batch_size, shuffle=True, drop_last=False,
                            seed=derived_seed(ctx.seed, 0xDE17A))
        self._train_for_attention(model, loader, ctx)
        return {"attention": self._ablate(model, loader, ctx)}

    def _train_for_attention(self, model, loader, ctx):
        s = self.settings
        groups = [{"params": list(model.head.parameters()), "lr": ctx.lr}]
        if s.attention_freeze_backbone:
            model.backbone.requires_grad_(False)
        else:
            groups.insert(0, {"params": list(model.backbone.body.parameters()), "lr": ctx.lr * ctx.backbone_lr_mult})
        opt = torch.optim.SGD(groups, lr=ctx.lr, momentum=ctx.momentum, weight_decay=ctx.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / s.attention_lr_decay_epochs))
        model.train()
        if s.attention_freeze_backbone:
            model.backbone.eval()
        for _ in tqdm(range(s.attention_epochs), desc="delta attention: training", disable=not ctx.progress,
                      leave=False):
            for x, y in loader:
                loss = F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()

    @torch.no_grad()
    def _ablate(self, model, loader, ctx) -> torch.Tensor:
        limit = self.settings.attention_iteration_limit
        n_batches = len(loader) if limit == -1 else min(len(loader), limit)
        model.eval()
        points = hook_points(model.backbone)
        delta = [torch.zeros(c, dtype=torch.float64, device=ctx.device) for c in self.channels]
        batches = zip(range(n_batches), loader)
        for _, (x, y) in tqdm(batches, total=n_batches, desc="delta attention: ablation", disable=not ctx.progress,
                              leave=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss0 = F.cross_entropy(model(x), y)
            for d, (block, layer) in zip(delta, points):
                d += (ablation_losses(model, block, layer, x, y) - loss0).double()
        return torch.cat([normalise_attention(d / n_batches) for d in delta]).cpu()

    def set_prepared(self, state):
        att = state["attention"]
        if att.numel() != sum(self.channels):
            raise ValueError(f"delta: attention has {att.numel()} weights but the hooked layers have "
                             f"{sum(self.channels)} channels")
        self.attention = att.to(self.head.weight.device)

    # ---- training ---------------------------------------------------------------------------------
    def feature_regularization(self, fs: list, ft: list) -> torch.Tensor:
        if self.settings.regularization == "feature_map":
            return sum(0.5 * ((t - s.detach()) ** 2).sum() for s, t in zip(fs, ft))
        if self.attention.numel() == 0:
            raise RuntimeError("delta: the channel-attention pre-pass has not run (call set_prepared(prepare(ctx)))")
        total = 0.0
        for a, s, t in zip(self.attention.split(self.channels), fs, ft):
            b, c, h, w = t.shape
            dist = ((t - s.detach()) ** 2).sum((2, 3))   # (B, C): ‖FM^t − FM^s‖² per sample and channel
            total = total + 0.5 * (c * a[None] * dist / (h * w)).sum()
        return total

    def training_step(self, views, labels, epoch):
        x = views[0]
        with torch.no_grad(), capture([layer for _, layer in hook_points(self.source)]) as fs:
            self.source(x)
        with capture([layer for _, layer in hook_points(self.backbone)]) as ft:
            fmap = self.backbone(x)
        y = self.head(pooled(fmap))
        cls = F.cross_entropy(y, labels)
        reg_backbone = self.settings.trade_off_backbone * self.feature_regularization(fs, ft)
        reg_head = self.settings.trade_off_head * 0.5 * sum((p ** 2).sum() for p in self.head.parameters())
        loss = cls + reg_backbone + reg_head
        return {"loss": loss, "cls": cls.item(), "reg_backbone": reg_backbone.item(), "reg_head": reg_head.item(),
                "acc": (y.argmax(1) == labels).float().mean().item()}

    @torch.no_grad()
    def heads(self, images):
        return {"main": self.head(pooled(self.backbone(images)))}
