"""Decoding and the dataset recipes on images of every accepted format and mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from app.core.inference import to_model_input
from app.core.preprocessing import apply_recipe
from tests.helpers import encode
from tests.images import draw_digit
from training.data import LoadedDataset

LIMIT = 40_000_000


def reference(digit: int = 3) -> np.ndarray:
    return to_model_input(encode(draw_digit(digit)), "digit", LIMIT)


def close_to_reference(pixels: np.ndarray, ref: np.ndarray, tolerance: float = 0.08) -> bool:
    return pixels.shape == (28, 28) and float(np.abs(pixels - ref).mean()) < tolerance


def test_digit_recipe_matches_mnist_geometry() -> None:
    pixels = reference()
    assert pixels.shape == (28, 28) and pixels.dtype == np.float32
    assert pixels.max() == pytest.approx(1.0) and pixels.min() >= 0
    rows, cols = np.flatnonzero(pixels.max(1) > 0.01), np.flatnonzero(pixels.max(0) > 0.01)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21, 22)  # 20x20 box, plus resampling fringe
    ys, xs = np.indices(pixels.shape)
    assert abs((ys * pixels).sum() / pixels.sum() - 14) < 0.6  # centre of mass at (14, 14)
    assert abs((xs * pixels).sum() / pixels.sum() - 14) < 0.6
    assert pixels[0].max() == 0 and pixels[:, 0].max() == 0  # light on dark: background is 0


def test_garment_recipe_scales_longer_side_to_28() -> None:
    image = np.full((300, 200), 255, np.uint8)
    image[50:250, 70:130] = 40  # a dark, tall object on white: 200 x 60
    pixels = to_model_input(encode(image), "garment", LIMIT)
    rows, cols = np.flatnonzero(pixels.max(1) > 0.5), np.flatnonzero(pixels.max(0) > 0.5)
    assert rows[0] == 0 and rows[-1] == 27  # longer side fills 28
    assert 7 <= cols[-1] - cols[0] + 1 <= 10  # 60/200 * 28 = 8.4
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1  # centred


@pytest.mark.parametrize(
    "fmt,options",
    [("PNG", {}), ("JPEG", {"quality": 90}), ("GIF", {}), ("BMP", {}), ("WEBP", {"quality": 90}), ("TIFF", {})],
)
def test_every_format_gives_the_same_input(fmt: str, options: dict[str, object]) -> None:
    pixels = to_model_input(encode(draw_digit(3), fmt, **options), "digit", LIMIT)
    assert close_to_reference(pixels, reference())


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "CMYK", "I;16", "I", "F", "LA", "RGBA"])
def test_every_mode_gives_the_same_input(mode: str) -> None:
    image = draw_digit(3)
    if mode == "I;16":
        converted = Image.fromarray((np.asarray(image, dtype=np.uint16) * 257).astype(np.uint16))
    elif mode == "I":
        converted = Image.fromarray(np.asarray(image, dtype=np.int32) * 257)
    elif mode == "F":
        converted = Image.fromarray(np.asarray(image, dtype=np.float32) / 255)
    else:
        converted = image.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    data = encode(converted, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith(mode[0])
    assert close_to_reference(to_model_input(data, "digit", LIMIT), reference(), tolerance=0.1)


def test_transparent_canvas_export_is_composited() -> None:
    """A drawing app's export: black strokes, everything else fully transparent (RGBA 0,0,0,0)."""
    strokes = 255 - np.asarray(draw_digit(3))  # alpha = ink
    rgba = np.zeros((*strokes.shape, 4), np.uint8)
    rgba[..., 3] = strokes
    assert close_to_reference(to_model_input(encode(Image.fromarray(rgba, "RGBA")), "digit", LIMIT), reference())
    # White strokes on transparency composite onto black instead.
    rgba[..., :3] = 255
    assert close_to_reference(to_model_input(encode(Image.fromarray(rgba, "RGBA")), "digit", LIMIT), reference())


def test_palette_with_transparency() -> None:
    image = draw_digit(3).convert("P")
    image.info["transparency"] = 255  # the paper colour index is transparent
    assert close_to_reference(to_model_input(encode(image), "digit", LIMIT), reference())


def test_light_on_dark_upload_is_not_inverted() -> None:
    light = draw_digit(3, ink=255, paper=0)
    assert close_to_reference(to_model_input(encode(light), "digit", LIMIT), reference())


def test_exif_orientation_is_applied() -> None:
    # Stored rotated by 90 degrees, with EXIF orientation 6 ("rotate 90 CW to view").
    stored = draw_digit(7).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    upright = to_model_input(data, "digit", LIMIT)
    assert close_to_reference(upright, reference(7))
    assert not close_to_reference(
        to_model_input(encode(stored, "JPEG", quality=95), "digit", LIMIT), reference(7), 0.05
    )


def test_animated_gif_uses_first_frame() -> None:
    frames = [draw_digit(3).convert("P"), draw_digit(8).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert close_to_reference(to_model_input(buffer.getvalue(), "digit", LIMIT), reference(3))


def test_huge_and_tiny_images() -> None:
    big = draw_digit(3, size=3000)
    assert close_to_reference(to_model_input(encode(big), "digit", LIMIT), reference(), tolerance=0.1)
    small = draw_digit(3, size=12)
    assert to_model_input(encode(small), "digit", LIMIT).shape == (28, 28)


def test_dataset_images_pass_through_unchanged(mnist: LoadedDataset, fashion: LoadedDataset) -> None:
    for data, recipe in ((mnist, "digit"), (fashion, "garment")):
        images = data.test.images[:200].numpy()
        unchanged = sum(
            float(np.abs(to_model_input(encode(img), recipe, LIMIT) - img / 255).max()) < 0.01 for img in images
        )
        assert unchanged >= 195, (recipe, unchanged)


def test_errors() -> None:
    with pytest.raises(UnsupportedImage):
        to_model_input(b"%PDF-1.4 not an image", "digit", LIMIT)
    with pytest.raises(UnsupportedImage):
        to_model_input(encode(draw_digit(3))[:300], "digit", LIMIT)  # truncated PNG
    with pytest.raises(UnsupportedImage):
        to_model_input(b"\x89PNG\r\n\x1a\n truncated", "digit", LIMIT)  # a PNG signature, then garbage
    with pytest.raises(UnsupportedImage):  # a real image in a format the service does not accept
        to_model_input(encode(draw_digit(3), "PPM"), "digit", LIMIT)
    with pytest.raises(InvalidImage, match="blank"):
        to_model_input(encode(np.full((50, 50), 255, np.uint8)), "digit", LIMIT)
    with pytest.raises(ImageTooLarge):
        to_model_input(encode(draw_digit(3, size=300)), "digit", 300 * 299)
    with pytest.raises(ValueError, match="valid: digit, garment"):
        apply_recipe(np.zeros((28, 28), np.float32), "sketch")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # An 8000 x 8000 PNG of one colour is a few kB; decoded it is 64 megapixels, over the service's limit.
    bomb = encode(Image.new("1", (8000, 8000), 0))
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="8000x8000 pixels; the limit is 40000000"):
        to_model_input(bomb, "digit", LIMIT)
    # Past Pillow's own guard (2 x 89 megapixels), its refusal is a 413 too, even with a higher limit of ours.
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        to_model_input(encode(Image.new("1", (20000, 20000), 0)), "digit", 10**9)
