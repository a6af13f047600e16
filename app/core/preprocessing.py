"""The datasets' own recipes, applied to a decoded light-on-dark image to give a 28x28 input.

- digit (MNIST): crop to the ink, scale into a 20x20 box keeping the aspect ratio, then place in
  28x28 so the centre of mass sits at pixel (14, 14), as LeCun et al. did.
- garment (Fashion-MNIST, Xiao et al. 2017): trim to the object, scale the longer side to 28
  keeping the aspect ratio, centre it (an odd margin puts the extra pixel top/left, as the set does).

An image already in dataset form (28x28, ink box as the recipe leaves it) comes out unchanged:
sizes that already match are not resampled and shifts are whole pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.core.errors import InvalidImage
from app.core.imaging import border_stats

SIDE = 28
DIGIT_BOX = 20
RECIPES = ("digit", "garment")


def _ink_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of what stands above the noise."""
    _, spread = border_stats(gray)
    threshold = max(0.002, 4.5 * spread, 0.1 * float(gray.max()) if spread > 0 else 0.0)
    mask = gray > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InvalidImage("the image is blank: no drawing or object stands out from the background")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longer side is `box`, keeping the aspect ratio; no resampling when it already is."""
    height, width = crop.shape
    longest = max(height, width)
    if longest == box:
        return crop
    size = (max(1, round(width * box / longest)), max(1, round(height * box / longest)))
    resized = Image.fromarray(crop, mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, None)


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Paste with clipping at the canvas edges."""
    height, width = patch.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, SIDE), min(left + width, SIDE)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


def _stretch(patch: np.ndarray) -> np.ndarray:
    """Ink peaks at 1, as in both datasets (a faint pencil photo becomes dataset-bright)."""
    peak = float(patch.max())
    return patch / peak if peak > 0 else patch


def digit_recipe(gray: np.ndarray) -> np.ndarray:
    top, bottom, left, right = _ink_box(gray)
    patch = _stretch(_fit(gray[top:bottom, left:right], DIGIT_BOX))
    height, width = patch.shape
    mass = float(patch.sum())
    com_y = float(patch.sum(axis=1) @ np.arange(height, dtype=np.float32)) / mass
    com_x = float(patch.sum(axis=0) @ np.arange(width, dtype=np.float32)) / mass
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    _paste(canvas, patch, round(SIDE / 2 - com_y), round(SIDE / 2 - com_x))
    return canvas


def garment_recipe(gray: np.ndarray) -> np.ndarray:
    top, bottom, left, right = _ink_box(gray)
    patch = _stretch(_fit(gray[top:bottom, left:right], SIDE))
    height, width = patch.shape
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    _paste(canvas, patch, (SIDE - height + 1) // 2, (SIDE - width + 1) // 2)
    return canvas


def apply_recipe(gray: np.ndarray, recipe: str) -> np.ndarray:
    """float32 [H, W] light on dark -> float32 [28, 28] in [0, 1]."""
    # NaN passes every clip and comparison and would reach round(); one sum catches it, and +-inf.
    if not np.isfinite(gray.sum(dtype=np.float64)):
        raise InvalidImage("image holds NaN or infinite pixel values; every pixel must be finite")
    if recipe == "digit":
        return digit_recipe(gray)
    if recipe == "garment":
        return garment_recipe(gray)
    raise ValueError(f"unknown preprocessing recipe {recipe!r}; valid: {', '.join(RECIPES)}")
