"""An image counts only once it decodes and is what was asked for: format and pixel size."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from providers.errors import ResultMismatch
from providers.model import PILLOW_FORMAT

# Result images are large by design (4K is 24 MP); Pillow's bomb check is for untrusted
# uploads, so allow the largest documented size with room to spare.
Image.MAX_IMAGE_PIXELS = 6336 * 2688 * 4


def verify_image(
    data: bytes, output_format: str, expected_size: tuple[int, int]
) -> tuple[int, int]:
    """Width and height of a fully decoded image, or `ResultMismatch` saying what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                actual_format = image.format
                image.load()  # decode every pixel: a truncated file fails here
                size = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ResultMismatch(f"image does not decode: {exc}", code="undecodable") from exc
    wanted = PILLOW_FORMAT[output_format]
    if actual_format != wanted:
        raise ResultMismatch(
            f"asked for {output_format} ({wanted}) but got {actual_format}", code="wrong_format"
        )
    if size != expected_size:
        raise ResultMismatch(
            f"asked for {expected_size[0]}x{expected_size[1]} but got {size[0]}x{size[1]}",
            code="wrong_size",
        )
    return size
