"""Decoding what people upload into one grayscale float array, light ink on a dark background.

Any format the service accepts, any size and mode: palette, 1-bit, 16-bit, CMYK, alpha (composited
onto a background that contrasts with the drawing), EXIF orientation, animated files (first frame).
Pillow's own decompression-bomb guard stays on; the service's pixel limit is checked before any
pixel is decoded, against the size a large JPEG really decodes at (draft mode: 1/2 to 1/8 scale).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedImage

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
# Huge photos are shrunk to this side before the recipe: it bounds the work per request, and the
# recipe ends at 28x28 anyway.
WORKING_SIDE = 512
_ORIENTATION = 0x0112  # EXIF tag


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify and check an upload without decoding its pixels; a large JPEG is set to decode scaled down.

    The limit applies to the pixels that will really be decoded: a 48 MP JPEG decodes at 1/8 scale
    (draft), so it costs, and counts, what a 0.75 MP image does.
    """
    try:
        # No warnings.catch_warnings here: it is not thread-safe, and requests decode in threads.
        # Pillow's own guard raises past twice its limit; our limit below is far lower anyway.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(f"not an image in a supported format; accepted: {', '.join(ACCEPTED_FORMATS)}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a recognised header, then garbage
        raise UnsupportedImage(f"image header could not be read: {exc}") from None
    declared = image.size
    _draft(image)
    width, height = image.size
    if width * height > max_pixels:
        scaled = f" (decoded at {width}x{height})" if image.size != declared else ""
        raise ImageTooLarge(
            f"image has {declared[0]}x{declared[1]} pixels{scaled}; the limit is {max_pixels} pixels per image"
        )
    if width == 0 or height == 0:
        raise InvalidImage("image has no pixels")
    return image


def _draft(image: Image.Image) -> None:
    """A JPEG at least twice WORKING_SIDE long decodes at 1/2, 1/4 or 1/8 scale, its longest side still >= WORKING_SIDE.

    libjpeg scales in the DCT, so the full-size pixels are never made: a phone photo decodes 4-16x
    cheaper. Grayscale straight from the luma channel (the same weights as Pillow's "L"). Smaller
    images are left alone, so their pixels, and the recipe's output, are exactly as before.
    """
    width, height = image.size
    longest = max(width, height)
    if image.format not in ("JPEG", "MPO") or longest < 2 * WORKING_SIDE:
        return
    # Ask for the working size in the image's own aspect: Pillow picks the largest scale that keeps
    # both sides at least this big.
    wanted = (max(1, math.ceil(width * WORKING_SIDE / longest)), max(1, math.ceil(height * WORKING_SIDE / longest)))
    image.draft("L" if image.mode in ("L", "RGB") else image.mode, wanted)


def decoded_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Width and height the image will be decoded at (after any draft scaling), from its header alone."""
    size: tuple[int, int] = open_image(data, max_pixels).size
    return size


def _load_pixels(image: Image.Image) -> Image.Image:
    """Decode the first frame, upright per EXIF; corrupt or truncated data is a 415."""
    try:
        image.seek(0)
        image.load()
        if image.getexif().get(_ORIENTATION, 1) == 1:
            return image
        upright = ImageOps.exif_transpose(image)
        return upright if upright is not None else image
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnsupportedImage(f"image data could not be decoded: {exc}") from None


def _gray_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Luminance in [0, 1] and alpha in [0, 1] (None when the image is opaque)."""
    mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        gray = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
        return gray, alpha
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image, dtype=np.float32)
        full_scale = 65535.0 if mode in _SIXTEEN_BIT or values.max(initial=0) > 255 else 255.0
        return np.clip(values / full_scale, 0.0, 1.0), None
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():  # NaN would reach the recipe's arithmetic; inf would set the scale
            raise InvalidImage("image holds NaN or infinite pixel values (a float image); every pixel must be finite")
        scale = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        return np.clip(values / scale, 0.0, 1.0), None
    if mode not in ("L", "1", "P", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    luminance = image if image.mode == "L" else image.convert("L")
    return np.asarray(luminance, dtype=np.float32) / 255.0, None


def _shrink(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    longest = max(height, width)
    if longest <= WORKING_SIDE:
        return gray
    size = (max(1, round(width * WORKING_SIDE / longest)), max(1, round(height * WORKING_SIDE / longest)))
    # BOX averages every source pixel: thin strokes fade but never vanish.
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def border_stats(gray: np.ndarray) -> tuple[float, float]:
    """Median of the outermost pixels, and their median absolute deviation (the noise level)."""
    border = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    low, high = float(border.min()), float(border.max())
    if low == high:  # a clean background, the common case: no sorting needed
        return low, 0.0
    median = float(np.median(border))
    return median, float(np.median(np.abs(border - median)))


def decode_light_on_dark(data: bytes | Image.Image, max_pixels: int) -> np.ndarray:
    """Upload bytes, or what `open_image` made of them -> float32 [H, W] in [0, 1]: light on a background near 0."""
    image = _load_pixels(data if isinstance(data, Image.Image) else open_image(data, max_pixels))
    gray, alpha = _gray_and_alpha(image)
    if alpha is not None and alpha.min() < 0.99:
        weight = float(alpha.sum())
        # A canvas export (dark strokes on transparency) goes onto white; light strokes onto black.
        drawing = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
        background = 1.0 if drawing < 0.5 else 0.0
        gray = gray * alpha + background * (1.0 - alpha)
    gray = _shrink(gray)
    # The datasets are light on dark: a digit on paper or a product on white is inverted.
    background, _ = border_stats(gray)
    if background > 0.5:
        gray, background = 1.0 - gray, 1.0 - background
    return np.clip(gray - background, 0.0, 1.0) if background > 0 else gray
