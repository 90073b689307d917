"""Backbones with their last feature map, channels and stride."""
from .backbones import BACKBONES, Backbone, PretrainedWeightsError, build_backbone, load_backbone_checkpoint

__all__ = ["BACKBONES", "Backbone", "PretrainedWeightsError", "build_backbone", "load_backbone_checkpoint"]
