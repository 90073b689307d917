"""The paper's own parts: concept patch search, optimal-transport matching, class queues,
contrastive losses and the front-door attention head."""
from .frontdoor import ChannelAttention, FrontDoorHead, PositionAttention, ib_kl
from .losses import (concept_contrastive_loss, concept_logits, image_contrastive_loss, kl_first_positives,
                     kl_uniform_positives)
from .patches import (PATCH_FORWARDS, PatchGeometry, PatchSearch, attentive_maps, channel_scores, check_confusing,
                      confusing_classes, crop_patches, embed_patches, peak_boxes, pool_patches, search_patches)
from .queues import ClassQueues, sequential_slots
from .sinkhorn import select_costs, sinkhorn_log
from .slot_norm import slot_batchnorm

__all__ = ["ChannelAttention", "FrontDoorHead", "PositionAttention", "ib_kl", "concept_contrastive_loss",
           "concept_logits", "image_contrastive_loss", "kl_first_positives", "kl_uniform_positives",
           "PatchGeometry", "PatchSearch", "attentive_maps", "channel_scores", "check_confusing",
           "confusing_classes", "crop_patches", "embed_patches", "peak_boxes", "pool_patches", "search_patches",
           "ClassQueues",
           "select_costs", "sequential_slots", "sinkhorn_log", "PATCH_FORWARDS", "slot_batchnorm"]
