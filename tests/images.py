"""Images the tests draw themselves: digits in many formats and modes, as people upload them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def draw_digit(digit: int, size: int = 200, ink: int = 0, paper: int = 255, rotate: float = 0.0) -> Image.Image:
    """A typed digit, dark ink on light paper by default, like a photo of a note."""
    image = Image.new("L", (size, size), paper)
    font = ImageFont.load_default(size=int(size * 0.6))
    ImageDraw.Draw(image).text((size / 2, size / 2), str(digit), fill=ink, font=font, anchor="mm")
    return image.rotate(rotate, fillcolor=paper) if rotate else image


def dataset_image_on_paper(pixels: np.ndarray, scale: int = 8) -> Image.Image:
    """A 28x28 dataset image as a scan: inverted to dark on white, enlarged, with a margin."""
    big = Image.fromarray(255 - pixels).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (28 * scale + 90, 28 * scale + 40), 255)
    canvas.paste(big, (60, 25))
    return canvas
