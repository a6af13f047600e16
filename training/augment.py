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


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride=1, padding=1), exactly, as two 1-D passes of elementwise maxima.

    The pooling kernel on CPU computes indices it then drops and costs several times this.
    """
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))  # what max_pool2d's padding means
    rows = torch.maximum(torch.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """F.affine_grid(theta [N, 2, 3]) by broadcasting instead of a batched matmul, several times cheaper.

    Pixel centres as affine_grid places them with align_corners=False: (2i + 1) / size - 1.
    """
    device, dtype = theta.device, theta.dtype
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1).div_(width).sub_(1).view(1, 1, width, 1)
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1).div_(height).sub_(1).view(1, height, 1, 1)
    columns = theta.transpose(1, 2).unsqueeze(1).unsqueeze(1)  # [N, 1, 1, 3, 2]: x, y and 1 multiply these
    # Small terms first ([N, 1, W, 2] and [N, H, 1, 2]), one full-size add last: grid [N, H, W, 2].
    return xs * columns[..., 0, :] + (ys * columns[..., 1, :] + columns[..., 2, :])


def augment_batch(x: torch.Tensor, policy: AugmentPolicy) -> torch.Tensor:
    """Randomly warp a batch x [N, 1, 28, 28] of pixels in [0, 1]; returns the same shape.

    Per-image choices are made with torch.where and per-image weights, never by boolean-mask
    indexing: a mask index costs a nonzero() (a host sync on CUDA) and a scatter per assignment.
    """
    n, device = x.shape[0], x.device
    angle = _uniform(n, -policy.rotation_deg, policy.rotation_deg, device) * (math.pi / 180)
    shear = _uniform(n, -policy.shear, policy.shear, device)
    scale = _uniform(n, *policy.scale, device)
    # The grid maps output to input coordinates in [-1, 1]: one pixel is 2/28.
    shift = _uniform(n * 2, -policy.translate_px, policy.translate_px, device).view(n, 2) * (2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Unwarped images: identity plus a whole-pixel shift, which grid_sample reproduces exactly.
    plain = torch.rand(n, device=device) >= policy.warp_prob
    pixels = torch.randint(-2, 3, (n, 2), device=device).float() * (2 / 28)
    # The 2x3 output-to-input matrices [N, 2, 3], built whole: x_in = a x + b y + c, y_in = d x + e y + f.
    warp = torch.stack((cos, -sin + shear * cos, shift[:, 0], sin, cos + shear * sin, shift[:, 1]), dim=1)
    identity = torch.eye(2, 3, device=device).view(1, 6)  # made on the device: no host copy, no CUDA sync
    theta = torch.where(plain.view(n, 1), identity, warp).view(n, 2, 3)
    theta[:, :, 2] = torch.where(plain.view(n, 1), pixels, shift)
    if policy.hflip:
        flip = torch.rand(n, device=device) < 0.5
        theta[:, 0, :2] *= (1 - 2 * flip.float()).view(n, 1)  # -1 mirrors x: a and b change sign
    grid = _sampling_grid(theta, x.shape[2], x.shape[3])
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if policy.stroke_prob > 0:
        pick = torch.rand(n, device=device)
        thicker = (pick < policy.stroke_prob / 2).float().view(n, 1, 1, 1)
        thinner = ((pick >= policy.stroke_prob / 2) & (pick < policy.stroke_prob)).float().view(n, 1, 1, 1)
        # One pass serves both: the 3x3 max of the negated image is minus its 3x3 min (the erosion).
        pooled = _max3x3(out * (1 - 2 * thinner))
        # Erosion of a thin stroke can erase it: keep a soft version, 0.5 * (out + eroded), instead of
        # the full min. Per-image weights (out, pooled): thicker (0, 1), thinner (0.5, -0.5), else
        # (1, 0); the products are exact, so this equals choosing per image, in two passes not four.
        keep = 1 - thicker - 0.5 * thinner
        out = torch.addcmul(out * keep, pooled, thicker - 0.5 * thinner)
    return out
