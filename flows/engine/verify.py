"""An image counts only once it is what was asked for and decodes: format and pixel size are
read from the header first, so a decompression bomb (a small file claiming 30000x30000
pixels) fails its cell before a single pixel is decoded."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from providers.errors import ResultMismatch
from providers.model import PILLOW_FORMAT

# Result images are large by design (4K is 24 MP): allow the largest documented size with
# room to spare; anything past it is refused by Pillow before decoding as well.
Image.MAX_IMAGE_PIXELS = 6336 * 2688 * 4


def verify_image(
    data: bytes, output_format: str, expected_size: tuple[int, int]
) -> tuple[int, int]:
    """Width and height of a fully decoded image, or `ResultMismatch` saying what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_header(image.format, image.size, output_format, expected_size)
                image.load()  # decode every pixel: a truncated file fails here
                return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ResultMismatch(f"image does not decode: {exc}", code="undecodable") from exc


def _check_header(
    actual_format: str | None, size: tuple[int, int], output_format: str,
    expected_size: tuple[int, int],
) -> None:
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
