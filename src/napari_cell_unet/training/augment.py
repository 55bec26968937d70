"""Random training crops with scale, flips, 90-degree rotations, intensity, gamma and noise augmentation.

Works on torch tensors that already live on the training device, so a GPU is fed without
worker processes: images are normalised and uploaded once, crops are cut by slicing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rotations: bool = True
    contrast: tuple[float, float] = (0.75, 1.33)  # multiplies the normalised image around its mean
    brightness: float = 0.1  # +- shift in normalised units (1.0 = the 1st..99.8th percentile range)
    gamma: tuple[float, float] = (0.7, 1.4)
    noise: float = 0.05  # maximum std of added Gaussian noise
    probability: float = 0.8  # chance that a crop gets intensity augmentation
    # zoom of each crop, drawn log-uniformly: (0.5, 2.0) shows cells from half to twice their size
    scale: tuple[float, float] = (1.0, 1.0)


class CropSampler:
    """Cuts random square crops out of a list of prepared images of different sizes.

    images   list of (C, H, W) float tensors (normalised), each at least `crop` in H and W
    targets  list of (3, H, W) uint8 tensors: cell, border, region (1 = annotated)
    Images are drawn in proportion to their annotated area times their `weights` (default 1);
    crop centres are drawn inside the bounding box of the annotated region, so small painted
    regions are still seen. With `augment.scale`, a window of crop / zoom pixels is cut and
    resized to the crop (image bilinear, targets nearest).
    """

    def __init__(self, images: list[torch.Tensor], targets: list[torch.Tensor], crop: int,
                 generator: torch.Generator, augment: AugmentConfig | None = AugmentConfig(),
                 weights: list[float] | None = None):
        self.images, self.targets, self.crop = images, targets, int(crop)
        self.generator = generator
        device = images[0].device
        # noise is drawn where the crops live (no host-to-GPU copy per batch)
        self.noise_generator = torch.Generator(device=device).manual_seed(generator.initial_seed() + 1)
        self.augment = augment
        weights = [1.0] * len(targets) if weights is None else weights
        self.weights = torch.tensor([float(t[2].sum()) * w for t, w in zip(targets, weights)], dtype=torch.float64)
        self.boxes = [_bounding_box(t[2]) for t in targets]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, crop, crop) float, targets (B, 3, crop, crop) float)."""
        g = self.generator
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=g).tolist()
        rand = torch.rand(batch_size, 2, generator=g).tolist()
        turns = torch.randint(0, 4, (batch_size,), generator=g).tolist()
        flips = torch.randint(0, 2, (batch_size,), generator=g).tolist()
        zooms = self._zooms(batch_size)
        xs, ys = [], []
        for b, index in enumerate(picks):
            image, target = self.images[index], self.targets[index]
            window = min(max(8, round(self.crop / zooms[b])), *image.shape[1:])
            top, left = self._corner(index, rand[b], window)
            x = image[:, top:top + window, left:left + window]
            y = target[:, top:top + window, left:left + window]
            if window != self.crop:
                x, y = _resize_crop(x, y, self.crop)
            if self.augment is not None and self.augment.rotations and turns[b]:
                x, y = torch.rot90(x, turns[b], (1, 2)), torch.rot90(y, turns[b], (1, 2))
            if self.augment is not None and self.augment.flips and flips[b]:
                x, y = torch.flip(x, (2,)), torch.flip(y, (2,))
            xs.append(x)
            ys.append(y)
        images = torch.stack(xs).float()
        targets = torch.stack(ys).float()
        if self.augment is not None:
            images = augment_intensity(images, self.augment, g, self.noise_generator)
        return images.contiguous(), targets.contiguous()

    def _zooms(self, batch_size: int) -> list[float]:
        low, high = self.augment.scale if self.augment is not None else (1.0, 1.0)
        if low == high == 1.0:
            return [1.0] * batch_size
        logs = torch.rand(batch_size, generator=self.generator) * (math.log(high) - math.log(low)) + math.log(low)
        return torch.exp(logs).tolist()

    def _corner(self, index: int, rand: list[float], window: int) -> tuple[int, int]:
        y0, y1, x0, x1 = self.boxes[index]
        _, height, width = self.images[index].shape
        cy = y0 + int(rand[0] * (y1 - y0))
        cx = x0 + int(rand[1] * (x1 - x0))
        top = min(max(cy - window // 2, 0), height - window)
        left = min(max(cx - window // 2, 0), width - window)
        return top, left


def _resize_crop(image: torch.Tensor, target: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, w, w) image (bilinear, antialiased when shrinking) and its (3, w, w) targets (nearest) as size x size."""
    shrinking = image.shape[-1] > size
    image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrinking)[0]
    target = F.interpolate(target[None].float(), size=(size, size), mode="nearest")[0].to(target.dtype)
    return image, target


def augment_intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                      noise_generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-crop contrast, brightness, gamma and Gaussian noise on normalised (B, C, H, W) images."""
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        values = low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator)
        return values.to(images.device)

    apply = (torch.rand(b, 1, 1, 1, generator=generator) < config.probability).to(images.device)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * uniform(*config.contrast) + mean + uniform(-config.brightness, config.brightness)
    # gamma acts on the [0, 1] part only; values beyond (saturated, very dark) stay linear
    clipped = out.clamp(0.0, 1.0)
    out = clipped.pow(uniform(*config.gamma)) + (out - clipped)
    noise = torch.randn(images.shape, generator=noise_generator or generator, device=images.device)
    out = out + noise * uniform(0.0, config.noise)
    return torch.where(apply, out, images)


def _bounding_box(region: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(region.any(dim=1)).flatten()
    cols = torch.nonzero(region.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
