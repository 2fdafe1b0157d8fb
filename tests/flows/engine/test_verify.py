"""Verification without decoding: every image a decoder accepts passes, and every truncated,
corrupted, short, oversized or wrong image fails with the code that says why.

Each accepted image is also decoded in full with Pillow here, so the cheap check is held to
what a decode would say; where it is stricter (a CRC Pillow does not read), the test says so."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, WebPImagePlugin

from nbp.flows.engine import verify
from nbp.flows.engine.verify import verify_image
from nbp.providers.emulator.core import bomb_png, render_image
from nbp.providers.errors import ResultMismatch

SIZE = (320, 200)
ROOT = Path(__file__).resolve().parents[3]


def encode(mode: str, fmt: str = "PNG", size: tuple[int, int] = SIZE, **options: object) -> bytes:
    """A noisy picture (so the compressed stream is long) in `mode`, encoded as `fmt`."""
    noise = Image.effect_noise(size, 60)
    mirrored = noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = Image.merge("RGB", (noise, noise.rotate(180), mirrored)).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decodes(data: bytes) -> bool:
    """What a full decode says (the yardstick)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:
        return False


def code_of(data: bytes, fmt: str = "png", size: tuple[int, int] = SIZE) -> str | None:
    try:
        verify_image(data, fmt, size)
    except ResultMismatch as exc:
        return exc.code
    return None


# -- building PNGs by hand -------------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(kind, body) for kind, body in parts)


def png_with_scanlines(raw: bytes, size: tuple[int, int] = SIZE, interlace: int = 0) -> bytes:
    """An 8-bit greyscale PNG whose IDAT holds exactly `raw` (valid CRCs, valid zlib)."""
    ihdr = struct.pack(">IIBBBBB", *size, 8, 0, 0, 0, interlace)
    return assemble([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


def grey_rows(rows: int, width: int = SIZE[0], filter_type: int = 0) -> bytes:
    rng = random.Random(rows)
    return b"".join(bytes([filter_type]) + rng.randbytes(width) for _ in range(rows))


def adam7_png(size: tuple[int, int]) -> bytes:
    """An interlaced 8-bit greyscale PNG: 7 passes of scanlines of their own widths."""
    width, height = size
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        pass_width = max(0, (width - x0 + dx - 1) // dx)
        pass_height = max(0, (height - y0 + dy - 1) // dy)
        if pass_width and pass_height:
            raw += grey_rows(pass_height, pass_width)
    return png_with_scanlines(raw, size, interlace=1)


# -- what passes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode("RGB"), id="png-rgb"),
        pytest.param(encode("RGBA"), id="png-rgba"),
        pytest.param(encode("L"), id="png-grey"),
        pytest.param(encode("LA"), id="png-grey-alpha"),
        pytest.param(encode("P"), id="png-palette"),
        pytest.param(encode("1"), id="png-1-bit"),
        pytest.param(encode("I;16"), id="png-16-bit"),
        pytest.param(encode("RGB", optimize=True), id="png-optimized"),
        pytest.param(png_with_scanlines(grey_rows(SIZE[1], filter_type=4)), id="png-paeth"),
        pytest.param(adam7_png(SIZE), id="png-interlaced"),
        pytest.param(adam7_png((3, 5)), id="png-interlaced-tiny"),
    ],
)
def test_every_png_a_decoder_accepts_passes(data: bytes) -> None:
    size = Image.open(io.BytesIO(data)).size
    assert decodes(data)
    assert verify_image(data, "png", size) == size


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode("RGB", "JPEG"), id="baseline"),
        pytest.param(encode("RGB", "JPEG", progressive=True), id="progressive"),
        pytest.param(encode("L", "JPEG"), id="grey"),
        pytest.param(encode("CMYK", "JPEG"), id="cmyk"),
        pytest.param(encode("RGB", "JPEG", optimize=True, quality=95, subsampling=0),
                     id="optimized-444"),
        pytest.param(encode("RGB", "JPEG", restart_marker_rows=1), id="restart-markers"),
        pytest.param(encode("RGB", "JPEG", exif=b"Exif\x00\x00" + bytes(64),
                            icc_profile=bytes(300), comment=b"made here"), id="exif-icc-comment"),
    ],
)
def test_every_jpeg_a_decoder_accepts_passes(data: bytes) -> None:
    assert decodes(data)
    assert verify_image(data, "jpg", SIZE) == SIZE


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_the_emulators_images_pass_at_every_resolution(fmt: str) -> None:
    for size in ((1024, 1024), (1376, 768), (2048, 2048)):
        assert verify_image(render_image(*size, fmt, "verify"), fmt, size) == size


# -- what fails ------------------------------------------------------------------------------


PNG = encode("RGB")
JPEG = encode("RGB", "JPEG")


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]


def idat_offset(data: bytes) -> int:
    return data.index(b"IDAT") + 4


@pytest.mark.parametrize(
    ("data", "fmt", "code"),
    [
        pytest.param(JPEG, "png", "wrong_format", id="jpeg-for-png"),
        pytest.param(PNG, "jpg", "wrong_format", id="png-for-jpeg"),
        pytest.param(encode("RGB", "GIF"), "png", "wrong_format", id="gif-for-png"),
        pytest.param(encode("RGB", "WEBP"), "png", "wrong_format", id="webp-for-png"),
        pytest.param(encode("RGB", size=(200, 320)), "png", "wrong_size", id="png-wrong-size"),
        pytest.param(encode("RGB", "JPEG", size=(200, 320)), "jpg", "wrong_size",
                     id="jpeg-wrong-size"),
        pytest.param(b"<html>not an image</html>", "png", "undecodable", id="html"),
        pytest.param(b"", "png", "undecodable", id="empty"),
        pytest.param(PNG[:8], "png", "undecodable", id="png-signature-only"),
        pytest.param(JPEG[:3], "jpg", "undecodable", id="jpeg-soi-only"),
    ],
)
def test_what_was_not_asked_fails_with_its_code(data: bytes, fmt: str, code: str) -> None:
    assert code_of(data, fmt) == code


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize(("data", "fmt"), [(PNG, "png"), (JPEG, "jpg")], ids=["png", "jpeg"])
def test_a_truncated_image_fails(data: bytes, fmt: str, fraction: float) -> None:
    cut = data[: max(4, int(len(data) * fraction))]
    assert not decodes(cut) or fmt == "jpg"  # Pillow pads a cut JPEG; nbp does not accept it
    assert code_of(cut, fmt) == "undecodable"


def drop_chunk(data: bytes, kind: bytes) -> bytes:
    return assemble([(k, body) for k, body in chunks(data) if k != kind])


def replace_idat(data: bytes, body: bytes) -> bytes:
    parts = [(k, b) for k, b in chunks(data) if k != b"IDAT"]
    return assemble([*parts[:-1], (b"IDAT", body), parts[-1]])


CORRUPT_PNGS: list[tuple[str, Callable[[], bytes]]] = [
    ("bad-crc-in-idat", lambda: flip(PNG, idat_offset(PNG) + 100)),
    ("bad-crc-field", lambda: flip(PNG, len(PNG) - 1)),  # IEND's CRC
    ("bad-crc-in-ihdr", lambda: flip(PNG, 20)),
    ("no-iend", lambda: drop_chunk(PNG, b"IEND")),
    ("no-idat", lambda: drop_chunk(PNG, b"IDAT")),
    ("short-idat", lambda: png_with_scanlines(grey_rows(SIZE[1] - 1))),
    ("long-idat", lambda: png_with_scanlines(grey_rows(SIZE[1] + 1))),
    ("one-byte-short", lambda: png_with_scanlines(grey_rows(SIZE[1])[:-1])),
    ("cut-zlib-stream", lambda: replace_idat(PNG, zlib.compress(grey_rows(SIZE[1]))[:-40])),
    ("bad-adler32", lambda: replace_idat(PNG, flip(zlib.compress(grey_rows(SIZE[1])), -1))),
    ("bad-filter-type", lambda: png_with_scanlines(grey_rows(SIZE[1], filter_type=5))),
    ("unknown-critical-chunk", lambda: assemble(
        [*chunks(PNG)[:1], (b"ZZZZ", b"x"), *chunks(PNG)[1:]])),
    ("palette-without-plte", lambda: drop_chunk(encode("P"), b"PLTE")),
    ("bad-bit-depth", lambda: assemble(
        [(b"IHDR", struct.pack(">IIBBBBB", *SIZE, 3, 2, 0, 0, 0)), *chunks(PNG)[1:]])),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=name) for name, m in CORRUPT_PNGS])
def test_a_corrupted_png_fails(make: Callable[[], bytes]) -> None:
    """Stricter than Pillow in places (it reads no CRC after the image data, nor IEND):
    a damaged byte anywhere says the file is not what the provider made."""
    assert code_of(make()) == "undecodable"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(JPEG[:-2], id="no-eoi"),
        pytest.param(JPEG[:2] + JPEG[JPEG.index(b"\xff\xc0"):], id="no-tables"),
        pytest.param(JPEG[:JPEG.index(b"\xff\xda")] + b"\xff\xd9", id="no-scan"),
        pytest.param(JPEG[:4] + b"\xff\xff" + JPEG[6:], id="segment-past-the-end"),
        pytest.param(JPEG[:JPEG.index(b"\xff\xc0")] + JPEG[JPEG.index(b"\xff\xc4"):],
                     id="no-frame-header"),
    ],
)
def test_a_broken_jpeg_structure_fails(data: bytes) -> None:
    assert code_of(data, "jpg") == "undecodable"


def test_random_damage_never_passes_a_png_a_decoder_rejects() -> None:
    rng = random.Random(12)
    for _ in range(200):
        damaged = bytearray(PNG)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(8, len(damaged))] = rng.randrange(256)
        if code_of(bytes(damaged)) is None:
            assert decodes(bytes(damaged))


# -- the header comes first: nothing is inflated for a bomb or a wrong size ----------------------


@pytest.fixture
def no_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("inflated image data before checking the header")

    monkeypatch.setattr(verify, "_inflate", refuse)


@pytest.mark.usefixtures("no_inflating")
def test_a_decompression_bomb_fails_before_anything_is_inflated() -> None:
    data = bomb_png(30000, 30000)  # 110 KB, 900 megapixels
    with pytest.raises(ResultMismatch, match="30000x30000") as caught:
        verify_image(data, "png", (1024, 1024))
    assert caught.value.code == "undecodable"


def webp_claiming(width: int, height: int) -> bytes:
    """A tiny lossless WebP whose VP8L header claims `width` x `height` pixels."""
    data = bytearray(encode("RGB", "WEBP", size=(16, 16), lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    flags = struct.unpack("<I", data[21:25])[0] >> 28  # alpha hint and version, kept
    data[21:25] = struct.pack("<I", (width - 1) | (height - 1) << 14 | flags << 28)
    return bytes(data)


@pytest.mark.parametrize("side", [
    pytest.param(9000, id="past-ours"),                  # 81 MP: Pillow's default says nothing
    pytest.param(12000, id="past-pillows-warning"),      # 144 MP: Pillow warns
    pytest.param(16000, id="past-pillows-error"),        # 256 MP: Pillow refuses to open it
])
def test_a_webp_bomb_fails_from_its_header_whatever_pillows_limit_says(
    side: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: Image.Image) -> None:
        raise AssertionError("decoded pixels before checking the header")

    data = webp_claiming(side, side)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", refuse)
    with pytest.raises(ResultMismatch, match="decompression bomb") as caught:
        verify_image(data, "webp", (1024, 1024))
    assert caught.value.code == "undecodable"


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose image descriptor claims `width` x `height` pixels."""
    data = bytearray(encode("P", "GIF", size=(8, 8)))
    start = data.index(b",", 13)  # the image descriptor: left, top, width, height
    data[start + 5:start + 9] = struct.pack("<HH", width, height)
    return bytes(data)


@pytest.mark.parametrize(("side", "code"), [
    pytest.param(9000, "wrong_format", id="another-format"),
    pytest.param(12000, "undecodable", id="another-format-past-twice-the-limit"),
])
def test_another_format_is_wrong_unless_its_header_is_a_bomb(side: int, code: str) -> None:
    assert code_of(gif_claiming(side, side), "png", (1024, 1024)) == code


def test_importing_verify_leaves_pillows_limit_alone() -> None:
    script = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
              "import nbp.flows.engine.verify; print(before == Image.MAX_IMAGE_PIXELS)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "True"


@pytest.mark.usefixtures("no_inflating")
def test_a_wrong_size_fails_before_anything_is_inflated() -> None:
    assert code_of(encode("RGB", size=(200, 320))) == "wrong_size"


def test_inflating_is_bounded_in_memory() -> None:
    """A small file claiming the largest allowed size is streamed in bounded pieces."""
    seen: list[int] = []
    original = verify._Scanlines.feed

    def feed(self: verify._Scanlines, piece: bytes) -> None:
        seen.append(len(piece))
        original(self, piece)

    size = (4096, 4096)
    data = png_with_scanlines(bytes(size[1] * (1 + size[0])), size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify._Scanlines, "feed", feed)
        assert verify_image(data, "png", size) == size
    assert len(data) < 100_000 and max(seen) <= verify.INFLATE_PIECE and len(seen) > 10


def test_zlib_ng_is_used_and_the_standard_zlib_gives_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zlib-ng is a dependency; without it the standard library's zlib does the same job."""
    assert verify._zlib.__name__ == "zlib_ng.zlib_ng"
    interlaced = adam7_png((3, 5))
    cases: list[tuple[bytes, tuple[int, int], str | None]] = [
        (PNG, SIZE, None), (interlaced, (3, 5), None),
        *[(make(), SIZE, "undecodable") for _, make in CORRUPT_PNGS],
    ]
    with_ng = [code_of(data, "png", size) for data, size, _ in cases]
    monkeypatch.setattr(verify, "_zlib", zlib)
    with_zlib = [code_of(data, "png", size) for data, size, _ in cases]
    assert with_ng == with_zlib == [code for _, _, code in cases]
