"""Facts about the model itself (Gemini 3 Pro Image, "Nano Banana Pro"), shared by every reseller.

Source: protocols.md §7 (Google's table, identical to the Wiro seed and confirmed by observed
outputs). Adapters, emulators and output verification all read these constants from here.
"""

from __future__ import annotations

ASPECT_RATIOS: tuple[str, ...] = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
)
RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpg", "webp")

# (aspect ratio, resolution) -> (width, height) in pixels.
PIXEL_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("1:1", "1K"): (1024, 1024), ("1:1", "2K"): (2048, 2048), ("1:1", "4K"): (4096, 4096),
    ("2:3", "1K"): (848, 1264), ("2:3", "2K"): (1696, 2528), ("2:3", "4K"): (3392, 5056),
    ("3:2", "1K"): (1264, 848), ("3:2", "2K"): (2528, 1696), ("3:2", "4K"): (5056, 3392),
    ("3:4", "1K"): (896, 1200), ("3:4", "2K"): (1792, 2400), ("3:4", "4K"): (3584, 4800),
    ("4:3", "1K"): (1200, 896), ("4:3", "2K"): (2400, 1792), ("4:3", "4K"): (4800, 3584),
    ("4:5", "1K"): (928, 1152), ("4:5", "2K"): (1856, 2304), ("4:5", "4K"): (3712, 4608),
    ("5:4", "1K"): (1152, 928), ("5:4", "2K"): (2304, 1856), ("5:4", "4K"): (4608, 3712),
    ("9:16", "1K"): (768, 1376), ("9:16", "2K"): (1536, 2752), ("9:16", "4K"): (3072, 5504),
    ("16:9", "1K"): (1376, 768), ("16:9", "2K"): (2752, 1536), ("16:9", "4K"): (5504, 3072),
    ("21:9", "1K"): (1584, 672), ("21:9", "2K"): (3168, 1344), ("21:9", "4K"): (6336, 2688),
}

# Google's standard price per image (protocols.md §6.4): what resellers that publish no price
# are estimated at, and the stand-in for a provider with no price at all.
GOOGLE_STANDARD_PRICES_USD: dict[str, float] = {"1K": 0.134, "2K": 0.134, "4K": 0.24}

# File extension -> the format name Pillow reports when it decodes the file.
PILLOW_FORMAT: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
MIME_TYPE: dict[str, str] = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def pixel_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Width and height the model returns for a ratio and resolution preset."""
    return PIXEL_SIZES[(aspect_ratio, resolution)]
