"""Concept (patch) search of METHOD.md §2.3, vectorised over the batch.

For each image: confusable classes from the key encoder's logits, a channel score
3·W_c − W_conf1 − W_conf2 − W_conf3, channels ranked by that score and cut into slices, one
attentive map per slice (sum of the slice's channel maps), its peak cell, a box around the peak
scaled to the input, and the crop by roi_align.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .slot_norm import slot_batchnorm

REF_CHANNELS = 2048          # ResNet-50: 9 slices of 30 channels, starts every 250 ranks
REF_SLICE_WIDTH = 30
REF_SLICE_STRIDE = 250
REF_IMAGE_SIZE = 224         # 64-px boxes and 64×64 crops at 224-px input
REF_BOX_SIZE = 64
ANCHORS = ("corner", "center")


@dataclass(frozen=True)
class PatchGeometry:
    """Where concept slices and boxes lie. ``derive`` scales the reference numbers (9 / 30 / 250 at
    2048 channels; 64-px boxes at 224 px) to any channel count and input size."""
    num_patches: int
    slice_width: int
    slice_stride: int
    box_size: int
    feature_stride: int
    anchor: str = "corner"

    @classmethod
    def derive(cls, channels: int, image_size: int, feature_stride: int, num_patches: int = 9,
               anchor: str = "corner", slice_width: int | None = None, slice_stride: int | None = None,
               box_size: int | None = None) -> "PatchGeometry":
        scale = channels / REF_CHANNELS
        geo = cls(num_patches=num_patches,
                  slice_width=slice_width or max(1, round(REF_SLICE_WIDTH * scale)),
                  slice_stride=slice_stride or max(1, round(REF_SLICE_STRIDE * scale)),
                  box_size=box_size or max(2, round(REF_BOX_SIZE * image_size / REF_IMAGE_SIZE)),
                  feature_stride=feature_stride, anchor=anchor)
        geo.validate(channels)
        return geo

    def validate(self, channels: int) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown box anchor {self.anchor!r}: choose one of {list(ANCHORS)}")
        if self.num_patches < 1 or self.slice_width < 1 or self.slice_stride < 1:
            raise ValueError(f"invalid patch geometry {self}")
        last = self.slice_starts[-1] + self.slice_width
        if last > channels:
            raise ValueError(f"{self.num_patches} slices of {self.slice_width} channels every {self.slice_stride} "
                             f"ranks need {last} channels, the backbone has {channels}")

    @property
    def slice_starts(self) -> list[int]:
        return [p * self.slice_stride for p in range(self.num_patches)]


def check_confusing(confusing: int, num_classes: int) -> None:
    """The concept loss needs at least 3 confusable classes (channel score) and at most C − 1 exist."""
    if not 3 <= confusing <= num_classes - 1:
        raise ValueError(f"confusing={confusing} is out of range for {num_classes} classes: it must satisfy "
                         f"3 <= confusing <= num_classes - 1 = {num_classes - 1}"
                         + (" (Concept-Tuning needs at least 4 classes)" if num_classes < 4 else ""))


def confusing_classes(logits: torch.Tensor, labels: torch.Tensor, confusing: int) -> torch.Tensor:
    """(B, confusing) class indices, most confusable first: classes by descending logit, true class removed."""
    B, C = logits.shape
    check_confusing(confusing, C)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    keep = order != labels[:, None]
    return order[keep].view(B, C - 1)[:, :confusing]


def channel_scores(head_weight: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """(B, D): 3·W_c − W of the three most confusable classes."""
    W = head_weight.detach()
    return 3 * W[labels] - W[conf[:, 0]] - W[conf[:, 1]] - W[conf[:, 2]]


def attentive_maps(fmap: torch.Tensor, scores: torch.Tensor, geo: PatchGeometry) -> torch.Tensor:
    """(B, P, H, W): for each slice of channels ranked by ``scores`` (descending), the sum of their maps."""
    B, D, H, W = fmap.shape
    ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices            # (B, D)
    offs = torch.tensor(geo.slice_starts, device=fmap.device)[:, None] + torch.arange(geo.slice_width,
                                                                                       device=fmap.device)
    chans = ranking[:, offs.flatten()]                                                    # (B, P*w)
    picked = fmap.detach().flatten(2).gather(1, chans[..., None].expand(-1, -1, H * W))  # (B, P*w, HW)
    return picked.view(B, geo.num_patches, geo.slice_width, H, W).sum(2)


def peak_boxes(maps: torch.Tensor, geo: PatchGeometry, image_hw: tuple[int, int]) -> torch.Tensor:
    """(B, P, 4) boxes (x1, y1, x2, y2) in pixels around each map's peak cell (first maximum),
    anchored at the cell's top-left pixel (reference) or its centre, clipped to the image."""
    B, P, H, W = maps.shape
    peak = maps.flatten(2).argmax(-1)                                  # (B, P)
    s = geo.feature_stride
    x = (peak % W) * s
    y = torch.div(peak, W, rounding_mode="floor") * s
    if geo.anchor == "center":
        x, y = x + s // 2, y + s // 2
    half = geo.box_size // 2
    img_h, img_w = image_hw
    return torch.stack([(x - half).clamp(min=0), (y - half).clamp(min=0),
                        (x + half).clamp(max=img_w), (y + half).clamp(max=img_h)], -1).float()


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also plainly contiguous, as 1×1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _rois(boxes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B·P, 5) roi_align boxes (image index, x1, y1, x2, y2) of (B, P, 4) boxes, in ``dtype``."""
    B, P, _ = boxes.shape
    idx = torch.arange(B, device=boxes.device, dtype=dtype).repeat_interleave(P)[:, None]
    return torch.cat([idx, boxes.reshape(B * P, 4).to(dtype)], 1)


def crop_patches(images: torch.Tensor, boxes: torch.Tensor, geo: PatchGeometry) -> torch.Tensor:
    """(B, P, 3, s, s) crops of ``images`` at ``boxes`` by roi_align (aligned, spatial scale 1)."""
    B, P, _ = boxes.shape
    crops = roi_align(images, _rois(boxes, images.dtype), output_size=(geo.box_size, geo.box_size), spatial_scale=1.0,
                      aligned=True)
    if is_channels_last(images):
        crops = crops.contiguous(memory_format=torch.channels_last)      # the crops keep the images' layout
    return crops.view(B, P, *crops.shape[1:])


def pool_patches(fmap: torch.Tensor, boxes: torch.Tensor, geo: PatchGeometry) -> torch.Tensor:
    """(B, P, D) features of the boxes pooled from the feature map the full-image forward computed
    (RoI-align at 1/stride, a window of box_size/stride cells, then its mean): the fast concept mode's
    stand-in for encoding each crop again. Differentiable in ``fmap``."""
    B, P, _ = boxes.shape
    cells = max(1, round(geo.box_size / geo.feature_stride))
    pooled = roi_align(fmap, _rois(boxes, fmap.dtype), output_size=(cells, cells), spatial_scale=1.0 / geo.feature_stride,
                       sampling_ratio=-1, aligned=True)
    return pooled.mean((2, 3)).view(B, P, -1)


@dataclass
class PatchSearch:
    boxes: torch.Tensor       # (B, P, 4) pixels
    confusing: torch.Tensor   # (B, n_conf) most confusable first
    maps: torch.Tensor        # (B, P, H, W) attentive maps


@torch.no_grad()
def search_patches(fmap: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, head_weight: torch.Tensor,
                   geo: PatchGeometry, confusing: int, image_hw: tuple[int, int]) -> PatchSearch:
    """The whole search for a batch: key-encoder feature map and logits in, boxes out."""
    conf = confusing_classes(logits.detach(), labels, confusing)
    maps = attentive_maps(fmap, channel_scores(head_weight, labels, conf), geo)
    return PatchSearch(peak_boxes(maps, geo, image_hw), conf, maps)


PATCH_FORWARDS = ("grouped", "batched", "per_slot")


def embed_patches(features, head_weight: torch.Tensor, head_bias: torch.Tensor, crops: torch.Tensor,
                  mode: str = "grouped", module: torch.nn.Module | None = None) -> torch.Tensor:
    """(B, P, C) L2-normalised logit-space embeddings of the crops.

    ``features(x)`` maps images to pooled features (B, D). The head is applied with detached weights
    (the reference's deep copy of the head): gradients reach the encoder, not the head. ``mode``:

    - ``"grouped"`` (default): all B·P crops in one forward, with BatchNorm statistics per slot (B crops
      each) in every BatchNorm layer of ``module`` — the reference's numbers (see ``slot_norm``);
    - ``"per_slot"``: one forward per slot, as the reference code does;
    - ``"batched"``: all crops in one forward with BatchNorm statistics over all B·P crops (a departure).
    """
    if mode not in PATCH_FORWARDS:
        raise ValueError(f"unknown patch_forward {mode!r}: choose one of {list(PATCH_FORWARDS)}")
    B, P = crops.shape[:2]
    if mode == "per_slot":
        h = torch.stack([features(crops[:, p].contiguous()) for p in range(P)], 1)   # (B, P, D)
    elif mode == "batched":
        h = features(crops.flatten(0, 1)).view(B, P, -1)
    else:
        if module is None:
            raise ValueError("patch_forward 'grouped' needs the encoder module whose BatchNorm layers to group")
        with slot_batchnorm(module, P):
            h = features(crops.transpose(0, 1).flatten(0, 1)).view(P, B, -1).transpose(0, 1)
    return F.normalize(F.linear(h, head_weight.detach(), head_bias.detach()), dim=-1)
