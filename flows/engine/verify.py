"""An image counts only once it is what was asked for and is whole.

Format and pixel size are read from the header first, so a decompression bomb (a small file
claiming 30000x30000 pixels) fails its cell before a single byte is inflated. Then each
format is checked as far as it can be without decoding pixels, which costs a fraction of a
decode (1K PNG: 2.9 ms with zlib-ng, 7 ms with the standard zlib, instead of 15-18 ms for a
Pillow decode; 4K PNG: 26 ms, 70 ms, 190 ms; 1K JPEG: 0.02 ms instead of 1.6 ms):

- PNG: signature; IHDR (size, a valid bit depth / colour type pair, compression, filter and
  interlace methods) before anything else; every chunk's CRC; chunk order (PLTE where the
  colour type needs it, IDAT chunks consecutive, IEND last); no unknown critical chunk; and
  the IDAT stream inflated (streamed, output bounded) to exactly the scanline bytes IHDR
  implies, its zlib stream ending with a valid Adler-32, every scanline's filter type 0-4.
  That is everything a decoder checks except unfiltering itself, which cannot fail: a PNG
  that passes decodes, and a truncated or corrupted one does not pass.
- JPEG: SOI, a well-formed marker segment sequence (every length inside the file), one SOF
  with the size, scans that end at a marker, and EOI. JPEG has no checksums: corrupt
  entropy-coded bytes inside a well-formed stream are not found (a full decode does not find
  them either: libjpeg substitutes data and warns); truncation is found (no EOI).
- WebP: fully decoded with Pillow; the VP8/VP8L bitstreams have no checksums and no cheaper
  check of them would be sound.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from PIL import Image, UnidentifiedImageError

from nbp.providers.errors import ResultMismatch
from nbp.providers.model import PILLOW_FORMAT

# Result images are large by design (4K is 24 MP): allow the largest documented size with
# room to spare; anything past it is refused before decoding or inflating. Checked here, from
# the header (`_check_size`), not through Pillow's process-wide `Image.MAX_IMAGE_PIXELS`.
MAX_PIXELS = 6336 * 2688 * 4


def _fastest_zlib() -> ModuleType:
    """zlib-ng when installed (a dependency of nbp): the same API, and it inflates a 1K PNG's
    scanlines in 2.8 ms instead of the system zlib 1.2's 7.0 (4K: 25 ms instead of 70)."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # the standard library's, slower
        return zlib
    return zlib_ng


_zlib = _fastest_zlib()

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Inflated scanlines are looked at in pieces of this size, so memory stays flat however
# large the image (and however small the compressed stream that claims it).
INFLATE_PIECE = 256 * 1024


def verify_image(
    data: bytes, output_format: str, expected_size: tuple[int, int]
) -> tuple[int, int]:
    """Width and height of an image that is `output_format`, `expected_size` and whole, or
    `ResultMismatch` with code `wrong_format`, `wrong_size` or `undecodable`."""
    wanted = PILLOW_FORMAT[output_format]
    actual = _sniff(data)
    if actual != wanted:
        raise ResultMismatch(
            f"asked for {output_format} ({wanted}) but got {actual}", code="wrong_format"
        )
    check = _CHECKS[actual]
    try:
        return check(data, expected_size)
    except (zlib.error, _zlib.error, struct.error, IndexError) as exc:
        raise _undecodable(str(exc)) from exc


def _undecodable(why: str) -> ResultMismatch:
    return ResultMismatch(f"image does not decode: {why}", code="undecodable")


def _sniff(data: bytes) -> str | None:
    """The format by its signature; other formats by Pillow's header parser (no decoding).
    A header claiming more than twice `MAX_PIXELS` is refused as a bomb before its format
    is judged, as Pillow's own check (`Image.open`, at twice its limit) would."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise _undecodable(str(exc)) from exc
    if width * height > 2 * MAX_PIXELS:
        raise _undecodable(f"the header claims {width}x{height} pixels, more than twice the "
                           f"{MAX_PIXELS} allowed (a decompression bomb?)")
    return fmt


def _check_size(size: tuple[int, int], expected_size: tuple[int, int]) -> None:
    """From the header, before any pixel data is touched: a bomb, then the wrong size."""
    if size[0] <= 0 or size[1] <= 0:
        raise _undecodable(f"the header says {size[0]}x{size[1]} pixels")
    if size[0] * size[1] > MAX_PIXELS:
        raise _undecodable(f"the header claims {size[0]}x{size[1]} pixels, more than the "
                           f"{MAX_PIXELS} allowed (a decompression bomb?)")
    if size != expected_size:
        raise ResultMismatch(
            f"asked for {expected_size[0]}x{expected_size[1]} but got {size[0]}x{size[1]}",
            code="wrong_size",
        )


# -- PNG -------------------------------------------------------------------------------------

# Allowed bit depths and samples per pixel of each colour type (PNG spec, 11.2.2 IHDR).
_PNG_COLOUR_TYPES: dict[int, tuple[frozenset[int], int]] = {
    0: (frozenset({1, 2, 4, 8, 16}), 1),   # greyscale
    2: (frozenset({8, 16}), 3),            # truecolour
    3: (frozenset({1, 2, 4, 8}), 1),       # indexed
    4: (frozenset({8, 16}), 2),            # greyscale + alpha
    6: (frozenset({8, 16}), 4),            # truecolour + alpha
}
# Adam7 passes: first column, first row, column step, row step (PNG spec, 8.2).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_KNOWN_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_CHUNK_TYPE = re.compile(rb"[A-Za-z]{4}")


def _png_rows(width: int, height: int, bits_per_pixel: int, interlaced: bool,
              ) -> list[tuple[int, int]]:
    """The scanlines IHDR implies, as (rows, bytes per row including the filter byte) for
    each pass (one pass when not interlaced)."""
    def row_bytes(pixels: int) -> int:
        return 1 + (pixels * bits_per_pixel + 7) // 8

    if not interlaced:
        return [(height, row_bytes(width))]
    passes = []
    for x0, y0, dx, dy in _ADAM7:
        pass_width = (width - x0 + dx - 1) // dx if width > x0 else 0
        pass_height = (height - y0 + dy - 1) // dy if height > y0 else 0
        if pass_width and pass_height:
            passes.append((pass_height, row_bytes(pass_width)))
    return passes


class _Scanlines:
    """Counts inflated bytes against what IHDR implies and checks each scanline's filter
    type byte, piece by piece (pieces need not align with rows)."""

    def __init__(self, passes: list[tuple[int, int]]) -> None:
        self.expected = sum(rows * stride for rows, stride in passes)
        self.seen = 0
        self._passes: list[tuple[int, int, int]] = []  # (start, end, stride)
        start = 0
        for rows, stride in passes:
            self._passes.append((start, start + rows * stride, stride))
            start += rows * stride

    def feed(self, piece: bytes) -> None:
        base, end = self.seen, self.seen + len(piece)
        if end > self.expected:
            raise _undecodable(f"the IDAT stream holds more than the {self.expected} bytes "
                               "of scanlines the header implies")
        for start, stop, stride in self._passes:
            if stop <= base or start >= end:
                continue
            first = start + -(-(max(base, start) - start) // stride) * stride  # next row
            if first < min(stop, end):
                filters = piece[first - base:min(stop, end) - base:stride]
                if max(filters) > 4:
                    raise _undecodable("a scanline has an unknown filter type")
        self.seen = end


def _verify_png(data: bytes, expected_size: tuple[int, int]) -> tuple[int, int]:
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    scanlines: _Scanlines | None = None
    inflater = _zlib.decompressobj()
    size = (0, 0)
    colour_type = 0
    seen_plte = idat_done = False
    idat_started = False
    while True:
        if pos + 12 > len(data):
            raise _undecodable("the file ends before IEND (truncated)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_at, crc_at = pos + 8, pos + 8 + length
        if length > 0x7FFFFFFF or crc_at + 4 > len(data):
            raise _undecodable(f"chunk {kind!r} runs past the end of the file (truncated)")
        if not _CHUNK_TYPE.fullmatch(kind):
            raise _undecodable(f"bad chunk type {kind!r}")
        (crc,) = struct.unpack_from(">I", data, crc_at)
        if _zlib.crc32(view[pos + 4:crc_at]) != crc:
            raise _undecodable(f"chunk {kind.decode()} fails its CRC (corrupted)")
        body = view[body_at:crc_at]
        if scanlines is None:  # the first chunk
            if kind != b"IHDR" or length != 13:
                raise _undecodable("the first chunk is not IHDR")
            size, colour_type, scanlines = _png_header(bytes(body), expected_size)
        elif kind == b"IDAT":
            if idat_done:
                raise _undecodable("IDAT chunks are not consecutive")
            if colour_type == 3 and not seen_plte:
                raise _undecodable("an indexed-colour image has no PLTE before IDAT")
            idat_started = True
            _inflate(inflater, body, scanlines)
        elif kind == b"IEND":
            break
        else:
            idat_done = idat_done or idat_started
            if kind == b"PLTE":
                if idat_started or colour_type in (0, 4) or length % 3 or not 0 < length <= 768:
                    raise _undecodable("misplaced or malformed PLTE")
                seen_plte = True
            elif kind == b"IHDR" or (not kind[0] & 0x20 and kind not in _KNOWN_CRITICAL):
                raise _undecodable(f"unexpected critical chunk {kind.decode()}")
        pos = crc_at + 4
    if scanlines is None or not idat_started:
        raise _undecodable("no image data (IDAT)")
    _inflate(inflater, b"", scanlines)  # what zlib still holds back
    if not inflater.eof:
        raise _undecodable("the IDAT stream ends early (truncated zlib stream)")
    if scanlines.seen != scanlines.expected:
        raise _undecodable(f"the IDAT stream holds {scanlines.seen} bytes of scanlines, "
                           f"{scanlines.expected} expected (short image data)")
    return size


def _png_header(
    ihdr: bytes, expected_size: tuple[int, int]
) -> tuple[tuple[int, int], int, _Scanlines]:
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    _check_size((width, height), expected_size)
    depths, samples = _PNG_COLOUR_TYPES.get(colour_type, (frozenset(), 0))
    if depth not in depths:
        raise _undecodable(f"bit depth {depth} with colour type {colour_type}")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise _undecodable("unknown compression, filter or interlace method")
    passes = _png_rows(width, height, depth * samples, interlace == 1)
    return (width, height), colour_type, _Scanlines(passes)


def _inflate(inflater: Any, compressed: bytes | memoryview,
             scanlines: _Scanlines) -> None:
    """Inflate `compressed` (b"": drain what zlib holds) in bounded pieces into `scanlines`."""
    pending = compressed
    while True:
        if inflater.eof:
            return  # bytes past the end of the zlib stream: ignored, as decoders do
        piece = inflater.decompress(pending, INFLATE_PIECE)
        if piece:
            scanlines.feed(piece)
        pending = inflater.unconsumed_tail
        if not pending and len(piece) < INFLATE_PIECE:
            return


# -- JPEG ------------------------------------------------------------------------------------

# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC) (ITU T.81, B.1.1.3).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length
# The end of entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker
# nor another 0xFF (a fill byte).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _verify_jpeg(data: bytes, expected_size: tuple[int, int]) -> tuple[int, int]:
    pos = 2  # after SOI
    size: tuple[int, int] | None = None
    tables: set[int] = set()        # quantisation tables defined (DQT)
    needed: set[int] = set()        # quantisation tables the frame's components use
    scans = 0
    while True:
        while data[pos:pos + 2] == b"\xff\xff":
            pos += 1  # fill bytes before a marker
        if pos + 2 > len(data):
            raise _undecodable("the file ends before EOI (truncated)")
        if data[pos] != 0xFF:
            raise _undecodable(f"no marker at byte {pos}")
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            continue
        if marker == 0xD8:
            raise _undecodable("a second SOI")
        if pos + 2 > len(data):
            raise _undecodable("the file ends inside a marker (truncated)")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise _undecodable(f"segment {marker:#x} runs past the end of the file (truncated)")
        segment = data[pos + 2:pos + length]
        pos += length
        if marker in _SOF:
            if size is not None:
                raise _undecodable("more than one frame header (SOF)")
            size = _jpeg_frame(segment, expected_size)
            needed = {segment[6 + 3 * i + 2] for i in range(segment[5])}
        elif marker == 0xDB:
            tables |= _jpeg_quantisation_tables(segment)
        elif marker == 0xDA:  # SOS: a scan header, then entropy-coded data up to a marker
            if size is None:
                raise _undecodable("a scan before the frame header")
            if not needed <= tables:
                raise _undecodable("a quantisation table the frame uses is not defined")
            components = segment[0] if segment else 0
            if not 1 <= components <= 4 or len(segment) != 4 + 2 * components:
                raise _undecodable("malformed scan header (SOS)")
            scans += 1
            end = _SCAN_END.search(data, pos)
            if end is None:
                raise _undecodable("the last scan has no end (truncated, no EOI)")
            pos = end.start()
    if size is None or scans == 0:
        raise _undecodable("no frame header or no scan")
    return size


def _jpeg_frame(segment: bytes, expected_size: tuple[int, int]) -> tuple[int, int]:
    if len(segment) < 6:
        raise _undecodable("malformed frame header (SOF)")
    precision, height, width, components = struct.unpack_from(">BHHB", segment)
    if height == 0:
        raise _undecodable("the height is given later (DNL), which nbp does not accept")
    _check_size((width, height), expected_size)
    if precision not in (8, 12, 16) or not 1 <= components <= 4 \
            or len(segment) != 6 + 3 * components:
        raise _undecodable("malformed frame header (SOF)")
    return width, height


def _jpeg_quantisation_tables(segment: bytes) -> set[int]:
    """The table ids a DQT segment defines (each: precision/id byte, 64 or 128 values)."""
    ids, pos = set(), 0
    while pos < len(segment):
        precision, table = segment[pos] >> 4, segment[pos] & 0x0F
        if precision > 1 or table > 3:
            raise _undecodable("malformed quantisation table (DQT)")
        ids.add(table)
        pos += 1 + 64 * (1 + precision)
    if pos != len(segment):
        raise _undecodable("malformed quantisation table (DQT)")
    return ids


# -- WebP ------------------------------------------------------------------------------------


def _verify_by_decoding(data: bytes, expected_size: tuple[int, int]) -> tuple[int, int]:
    """Header first (format, bomb, size), then every pixel decoded. `Image.open` reads the
    header only; our `MAX_PIXELS` is checked on its size before `load()` inflates anything.
    Pillow's own, looser bomb check is left to its default: its warning is ours to judge,
    and its error (past twice its limit, far past ours) is the same refusal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_size(image.size, expected_size)
                image.load()  # decode every pixel: a truncated file fails here
                return image.size
    except Image.DecompressionBombError as exc:
        raise _undecodable(f"{exc} (more than the {MAX_PIXELS} pixels allowed: a "
                           "decompression bomb?)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(str(exc)) from exc


_CHECKS: dict[str | None, Callable[[bytes, tuple[int, int]], tuple[int, int]]] = {
    "PNG": _verify_png, "JPEG": _verify_jpeg, "WEBP": _verify_by_decoding,
}
