"""Locality guidance (Li et al., ECCV 2022, "Locality Guidance for Improving Vision Transformers on Tiny
Datasets"): a small CNN is trained first on the same photos at a low resolution, then frozen; while the ViT
trains, some of its blocks' patch tokens are mapped by 1x1 convolutions onto the CNN's stage outputs and pulled
towards them (mean squared error), on top of the classification loss. The CNN's local-to-global features teach
the ViT the locality that a few hundred photos cannot. The guide is training-only: it is not part of the ViT,
so predicting and exporting never see it.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vitlit.models.layers import resized_square

log = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with batch norm and a shortcut (1x1 convolution where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class GuideCNN(nn.Module):
    """A small ResNet: a stride-2 3x3 convolution, then one basic block per stage (strides 1, 2, 2, ...), a linear head.

    ``stages(images)`` returns each stage's output (B, C_i, H_i, W_i): the features the ViT imitates.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128)):
        super().__init__()
        self.widths = tuple(widths)
        self.entry = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        channels = [widths[0], *widths]
        self.stage_blocks = nn.ModuleList(
            BasicBlock(channels[i], channels[i + 1], 1 if i == 0 else 2) for i in range(len(widths))
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], self.entry(images)
        for block in self.stage_blocks:
            x = block(x)
            features.append(x)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(images)[-1].mean(dim=(-2, -1)))


class LocalityGuidance(nn.Module):
    """The guide CNN and the 1x1 convolutions that map ViT blocks' tokens onto its stages.

    Args:
        embed_dim: the ViT's width D.
        depth: the ViT's block count; ``blocks`` index into it (negative from the end).
        num_classes: the guide's head (it is trained as a classifier).
        weight: weight of the guidance loss (the paper's 2.5).
        blocks: which ViT blocks imitate the guide's stages, one per stage (the paper: first, middle, last).
        widths: the guide's stage widths.
        size: the side, in pixels, of the images the guide is trained on and reads (low resolution is enough).
        steps: the guide's training steps (batches), before the ViT's first step: a budget that does not grow
            with the folder (1400 is 100 epochs of pizza_steak_sushi's 14 batches).
        lr: the guide's peak learning rate (SGD with momentum 0.9, cosine decay, weight decay 5e-4).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_classes: int,
        weight: float = 2.5,
        blocks: Sequence[int] = (0, -2, -1),
        widths: Sequence[int] = (32, 64, 128),
        size: int = 64,
        steps: int = 1400,
        lr: float = 0.05,
    ):
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"locality guidance: {len(blocks)} blocks for {len(widths)} guide stages; give one each")
        self.blocks = [block % depth for block in blocks]
        self.weight, self.size, self.steps, self.lr = weight, size, steps, lr
        self.guide = GuideCNN(num_classes, widths).requires_grad_(False)
        self.projections = nn.ModuleList(nn.Conv2d(embed_dim, width, 1) for width in widths)
        # Saved with the checkpoint: a resumed run does not train the guide again.
        self.register_buffer("guide_trained", torch.tensor(False))

    def train(self, mode: bool = True) -> LocalityGuidance:
        super().train(mode)
        self.guide.eval()  # frozen: batch norm uses its running statistics
        return self

    def loss(self, images: torch.Tensor, block_tokens: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Normalised images (B, 3, H, W) and the chosen blocks' patch tokens (B, N, D) on a ``grid`` -> the mean
        over stages of the squared error between projected tokens and the guide's features, at the finer size."""
        with torch.no_grad():
            targets = self.guide.stages(resized_square(images, self.size))
        total = images.new_zeros((), dtype=torch.float32)
        for tokens, projection, target in zip(block_tokens, self.projections, targets, strict=True):
            feature_map = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
            student = projection(feature_map)
            size = (max(student.shape[-2], target.shape[-2]), max(student.shape[-1], target.shape[-1]))
            student, target = (_upsampled(feature, size) for feature in (student, target))
            total = total + F.mse_loss(student.float(), target.float())
        return total / len(targets)

    def fit_guide(
        self,
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        label_smoothing: float = 0.0,
        autocast: Callable[[], object] | None = None,
    ) -> float:
        """Train the guide for ``steps`` batches of ``loader`` (uint8 or normalised images and labels), passing
        over it as often as that takes, then freeze it. Returns its accuracy on the last pass's (augmented) batches."""
        guide = self.guide.requires_grad_(True).train()
        optimizer = torch.optim.SGD(guide.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / self.steps))  # noqa: E731
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        step = correct = seen = 0
        while step < self.steps:
            correct = seen = 0
            for images, labels in itertools.islice(loader, self.steps - step):
                images = resized_square(normalize(images.to(device)), self.size)
                labels = labels.to(device)
                with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
                    logits = guide(images)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                correct += int((logits.argmax(-1) == labels).sum())
                seen += len(labels)
            if not seen:
                raise ValueError("locality guidance: the training loader gave no batches to train the guide on")
        guide.requires_grad_(False).eval()
        self.guide_trained.fill_(True)
        accuracy = correct / max(seen, 1)
        log.info("locality guide CNN: %d steps at %d px, %.3f training accuracy", self.steps, self.size, accuracy)
        return accuracy


def _upsampled(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(feature_map.shape[-2:]) == size:
        return feature_map
    return F.interpolate(feature_map, size, mode="bilinear", align_corners=False)


@contextmanager
def block_outputs(blocks: nn.ModuleList, indices: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the ``with``, the returned dict maps each index to the output of ``blocks[index]``'s last call."""
    outputs: dict[int, torch.Tensor] = {}

    def record(index: int) -> Callable[..., None]:
        return lambda _module, _inputs, output: outputs.__setitem__(index, output)

    hooks = [blocks[index].register_forward_hook(record(index)) for index in indices]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()
