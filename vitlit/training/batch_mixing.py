"""MixUp and CutMix on whole batches (torchvision transforms v2), for the training step."""

from __future__ import annotations

from torchvision.transforms import v2


def batch_mixing(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> v2.Transform | None:
    """A transform (images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, num_classes)).

    MixUp (Zhang et al. 2018) blends two images; CutMix (Yun et al. 2019) pastes a box of one into the
    other; both mix the labels in proportion. With both alphas above 0 each call picks one at random
    (as DeiT and timm do). ``None`` when both alphas are 0.
    """
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"model.batch_mixing.{name} must be >= 0 (0 disables it), got {alpha}")
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
