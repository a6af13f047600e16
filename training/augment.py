"""Augmentation on whole batches of tensors, so it costs little beside the forward pass.

Served models meet images from outside the datasets: other writers and pens (slant, rotation,
stroke width), other scanners and phone photos (scale, position), shop photos of garments
(mirror images, a little zoom and shift). One random affine warp per image covers the geometry;
a 3x3 max-pool (dilation) or min-pool (erosion) covers the stroke width. Images that are not
warped get a whole-pixel shift only, which resamples nothing: the test sets' images are sharp, and
a model that saw only interpolated images would lose accuracy on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    rotation_deg: float
    shear: float  # horizontal slant, tan of the angle
    scale: tuple[float, float]
    translate_px: float
    hflip: bool
    stroke_prob: float  # chance of a thicker or thinner stroke
    warp_prob: float  # chance of the affine warp; the others are shifted by whole pixels


POLICIES: dict[str, AugmentPolicy] = {
    # Digits: slant, rotation, scale, position and pen width vary between writers.
    "digit": AugmentPolicy(12.0, 0.25, (0.85, 1.1), 2.5, hflip=False, stroke_prob=0.3, warp_prob=0.8),
    # Garments: mirrored shots, a little zoom and shift; rotation stays mild (the set is upright),
    # and the serving recipe already normalises scale and position, so most images stay sharp.
    "garment": AugmentPolicy(4.0, 0.0, (0.92, 1.06), 1.5, hflip=True, stroke_prob=0.0, warp_prob=0.3),
}


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def augment_batch(x: torch.Tensor, policy: AugmentPolicy) -> torch.Tensor:
    """Randomly warp a batch x [N, 1, 28, 28] of pixels in [0, 1]; returns the same shape."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -policy.rotation_deg, policy.rotation_deg, device) * (math.pi / 180)
    shear = _uniform(n, -policy.shear, policy.shear, device)
    scale = _uniform(n, *policy.scale, device)
    # affine_grid maps output to input coordinates in [-1, 1]: one pixel is 2/28.
    shift = _uniform(n * 2, -policy.translate_px, policy.translate_px, device).view(n, 2) * (2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin + shear * cos
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos + shear * sin
    theta[:, :, 2] = shift
    # Unwarped images: identity plus a whole-pixel shift, which grid_sample reproduces exactly.
    plain = torch.rand(n, device=device) >= policy.warp_prob
    pixels = torch.randint(-2, 3, (n, 2), device=device).float() * (2 / 28)
    theta[plain] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
    theta[plain, :, 2] = pixels[plain]
    if policy.hflip:
        flip = torch.rand(n, device=device) < 0.5
        theta[flip, 0, :2] = -theta[flip, 0, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if policy.stroke_prob > 0:
        pick = torch.rand(n, device=device)
        thicker = (pick < policy.stroke_prob / 2).view(n, 1, 1, 1)
        thinner = ((pick >= policy.stroke_prob / 2) & (pick < policy.stroke_prob)).view(n, 1, 1, 1)
        dilated = F.max_pool2d(out, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-out, 3, stride=1, padding=1)
        # Erosion of a thin stroke can erase it: keep a soft version instead of the full min.
        out = torch.where(thicker, dilated, torch.where(thinner, 0.5 * (out + eroded), out))
    return out
