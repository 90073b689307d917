"""Backbones with their last feature map, channels and stride; weight files (MoCo, torchvision)."""
from .backbones import BACKBONES, Backbone, PretrainedWeightsError, build_backbone, load_backbone_checkpoint
from .checkpoints import convert_moco, read_weights

__all__ = ["BACKBONES", "Backbone", "PretrainedWeightsError", "build_backbone", "convert_moco",
           "load_backbone_checkpoint", "read_weights"]
