"""What a request's images will cost to decode, read from their headers before any pixel is decoded.

A 35-byte GIF may declare a 6000x6000 canvas: the bytes of a request say nothing of its cost, the
pixels its images decode to do. The routes measure them on the event loop (Pillow's Image.open
reads only the header: microseconds, like the multipart parse already done there), refuse a request
over the per-request budget with a 413, and send a request over `heavy_request_pixels` through the
batcher's large-image lane (app/core/batching.py) so its decoding never holds the inference thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from app.core.errors import ImageTooLarge, PixelserveError
from app.core.imaging import open_image
from app.core.settings import Settings

# What one image costs beyond its pixels (~0.4 ms: opening it, the recipe's resampling and its
# Python calls), in pixels of decoding (~10 ns each): a lone 28x28 upload stays inline, a request
# of more than a handful of images goes to the lane.
IMAGE_OVERHEAD_PIXELS = 40_000


def open_uploads(
    files: Sequence[bytes], settings: Settings, place: Callable[[int], str]
) -> tuple[list[Image.Image], int]:
    """The files opened (headers read, pixels not), and the pixels they decode to (JPEGs after draft scaling).

    413/415/422 before any pixel is decoded; `place(position)` names a file in an error message ("" for
    none). The opened images go on to be decoded, so no header is parsed twice.
    """
    images, total = [], 0
    for position, data in enumerate(files):
        try:
            image = open_image(data, settings.max_image_pixels)
        except PixelserveError as exc:
            if where := place(position):
                exc.message = f"{where}: {exc.message}"
            raise
        images.append(image)
        total += image.width * image.height
    if total > settings.max_request_pixels:
        raise ImageTooLarge(
            f"the request's {len(files)} image(s) decode to {total} pixels in all; the limit is "
            f"{settings.max_request_pixels} pixels per request (each image at most {settings.max_image_pixels})"
        )
    return images, total


def is_heavy(pixels: int, images: int, settings: Settings) -> bool:
    """Whether a request of `images` decoding `pixels` in all is decoded in the large-image lane rather than inline.

    Each image also costs a fixed amount, whatever its size (open, recipe, Python overhead): 64
    tiny images would hold the inference thread for tens of milliseconds, so they count too.
    """
    return pixels + images * IMAGE_OVERHEAD_PIXELS > settings.heavy_request_pixels
