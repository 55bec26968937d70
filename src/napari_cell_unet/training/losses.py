"""BCE + Dice on the two sigmoid outputs, masked by the annotated region."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, region: torch.Tensor,
                      border_weight: float = 1.0) -> torch.Tensor:
    """Loss of (B, 2, H, W) logits (cell, border) against (B, 2, H, W) 0/1 targets.

    `region` (B, 1, H, W) is 1 where the annotation is complete and 0 elsewhere: pixels outside
    the region contribute nothing (no loss, no gradient), so a partially annotated image never
    teaches that its unpainted cells are background. Each channel gets mean BCE over the region
    plus a soft Dice loss over the region; the border channel is weighted by `border_weight`.
    """
    region = region.to(logits.dtype)
    weight = region.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    annotated = region.sum().clamp_min(1.0)
    bce_per_channel = (bce * weight).sum(dim=(0, 2, 3)) / annotated
    probabilities = torch.sigmoid(logits) * weight
    overlap = (probabilities * targets).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + (targets * weight).sum(dim=(0, 2, 3))
    dice_per_channel = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    per_channel = bce_per_channel + dice_per_channel
    return per_channel[0] + border_weight * per_channel[1]


def distillation_loss(logits: torch.Tensor, soft_targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE against (B, 2, H, W) soft targets (the base model's probabilities) where `weight` (B, 1, H, W) > 0.

    Outside a partial annotation this keeps the fine-tuned model's output where the base model had it.
    """
    weight = weight.to(logits.dtype).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, soft_targets.to(logits.dtype), reduction="none")
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)
