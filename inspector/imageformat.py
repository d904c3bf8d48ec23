"""What a frame file's bytes say about themselves before anything decodes them: format, declared size, whole.

Two questions the daemon must answer without decoding:

- **How big will it be?** A few KB can declare 20000 x 20000 pixels (1.2 GB decoded); the declared width and
  height are read from the header of every format the daemon knows (JPEG, PNG, BMP, TIFF/BigTIFF, WebP) and
  refused above the pixel limit. OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, set in
  ``inspector/__init__.py`` before cv2 is imported) is the backstop for any other format it decodes.
- **Is it whole?** A writer that is still writing, or paused, leaves a prefix: JPEG without its EOI after the scan
  data, PNG without a complete IEND chunk, BMP/WebP shorter than their headers declare, TIFF whose strips or tiles
  extend past the end. Decoders are no judge: libjpeg fills a truncated JPEG with grey and says nothing.

``whole`` is True (complete by its format's own rules), False (a prefix: more bytes are expected) or None (a
format this module does not know, or a header too malformed to tell: the decoder decides).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAGIC_BY_SUFFIX = {  # the first bytes a file of this extension must start with
    ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",), ".png": (PNG_SIGNATURE,), ".bmp": (b"BM",),
    ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    ".webp": (b"RIFF",),
}
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_INT_FORMATS = {3: "H", 4: "I", 16: "Q"}
_TIFF_MAX_ENTRIES = 4096
_TIFF_MAX_PARTS = 1 << 20  # strips/tiles: a 100 MP image at one row per strip has 10^4..10^5


@dataclass(frozen=True)
class ImageHeader:
    format: str  # jpeg | png | bmp | tiff | webp | unknown
    width: int | None = None
    height: int | None = None
    whole: bool | None = None

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None


def inspect_image(data: bytes, suffix: str = "") -> ImageHeader:
    """Format, declared dimensions and completeness of ``data`` (the file's bytes; ``suffix`` its extension)."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith(b"BM"):
        return _bmp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(data)
    if data.startswith(b"RIFF") and (data[8:12] == b"WEBP" or (len(data) < 12 and suffix == ".webp")):
        return _webp(data)
    if _not_started(data, suffix):
        return ImageHeader("unknown", whole=False)
    return ImageHeader("unknown")


def _not_started(data: bytes, suffix: str) -> bool:
    """Too short to show the format's magic yet, or still the zeros of a preallocated file: more is coming."""
    head = data[:16]
    if head and not head.strip(b"\x00"):
        return True
    return any(len(data) < len(magic) and magic.startswith(data) for magic in _MAGIC_BY_SUFFIX.get(suffix, ()))


def _jpeg(data: bytes) -> ImageHeader:
    """Walk the marker segments to the first scan (SOS), then find EOI after it. Entropy-coded data cannot
    contain FF D9 (FF is stuffed as FF 00), so the first FF D9 after the scan starts is the image's end; an EOI
    inside an APP1 thumbnail is skipped with its segment."""
    n, i = len(data), 2
    width = height = None
    while True:
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > n:
            return ImageHeader("jpeg", width, height, whole=False)
        if data[i] != 0xFF:
            return ImageHeader("jpeg", width, height, whole=None)  # not a marker: malformed, the decoder judges
        marker = data[i + 1]
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:  # EOI before any scan: a header-only file
            return ImageHeader("jpeg", width, height, whole=None)
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return ImageHeader("jpeg", width, height, whole=None)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if i + 9 > n:
                return ImageHeader("jpeg", width, height, whole=False)
            height = int.from_bytes(data[i + 5:i + 7], "big") or None
            width = int.from_bytes(data[i + 7:i + 9], "big") or None
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its header; is there an EOI after it
            #                 (searched from the end, where it is: a forward search trips over every stuffed FF)
            return ImageHeader("jpeg", width, height, whole=data.rfind(b"\xff\xd9", i + 2 + length) >= 0)
        i += 2 + length


def _png(data: bytes) -> ImageHeader:
    """Chunks are (length, type, data, crc): walk them to a complete IEND."""
    n = len(data)
    width = height = None
    if n >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
    i = len(PNG_SIGNATURE)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        if length > 0x7FFFFFFF:
            return ImageHeader("png", width, height, whole=None)
        end = i + 12 + length
        if end > n:
            return ImageHeader("png", width, height, whole=False)
        if data[i + 4:i + 8] == b"IEND":
            return ImageHeader("png", width, height, whole=True)
        i = end
    return ImageHeader("png", width, height, whole=False)


def _bmp(data: bytes) -> ImageHeader:
    """BITMAPCOREHEADER (12 bytes) or BITMAPINFOHEADER and later (>= 40): the pixel array must be all there."""
    n = len(data)
    if n < 26:
        return ImageHeader("bmp", whole=False)
    bf_size, off_bits, dib = struct.unpack_from("<I4xII", data, 2)
    if dib == 12:
        width, height, bits = struct.unpack_from("<HH2xH", data, 18)
        compression, size_image = 0, 0
    elif dib >= 40:
        if n < 38:
            return ImageHeader("bmp", whole=False)
        width, height, bits, compression, size_image = struct.unpack_from("<ii2xHII", data, 18)
        width, height = abs(width), abs(height)
    else:
        return ImageHeader("bmp", whole=None)
    if compression in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS: rows of 4-byte-aligned pixels
        needed = off_bits + ((bits * width + 31) // 32) * 4 * height
    else:  # RLE or embedded JPEG/PNG: the header's sizes are all there is
        needed = off_bits + size_image if size_image else bf_size
    return ImageHeader("bmp", width or None, height or None, whole=n >= needed if needed else None)


def _tiff(data: bytes) -> ImageHeader:
    """First IFD (the page OpenCV decodes): dimensions, and every strip/tile it points to within the file."""
    n = len(data)
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if n < (16 if big else 8):
        return ImageHeader("tiff", whole=False)
    ifd = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count_size, entry_size, inline = (8, 20, 8) if big else (2, 12, 4)
    if ifd + count_size > n:
        return ImageHeader("tiff", whole=False)
    entries = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)[0]
    if entries > _TIFF_MAX_ENTRIES:
        return ImageHeader("tiff", whole=None)
    start = ifd + count_size
    if start + entries * entry_size > n:
        return ImageHeader("tiff", whole=False)
    tags: dict[int, tuple[int, ...]] = {}
    truncated = start + entries * entry_size + (8 if big else 4) > n  # the next-IFD offset closes the IFD
    for k in range(entries):
        pos = start + k * entry_size
        tag, typ = struct.unpack_from(order + "HH", data, pos)
        count = struct.unpack_from(order + ("Q" if big else "I"), data, pos + 4)[0]
        nbytes = count * _TIFF_TYPE_SIZES.get(typ, 1)
        where = pos + (12 if big else 8)
        if nbytes > inline:  # the value lives elsewhere in the file: it must be there too
            where = struct.unpack_from(order + ("Q" if big else "I"), data, where)[0]
            if where + nbytes > n:
                truncated = True
                continue
        if tag in (256, 257, 273, 279, 324, 325):
            fmt = _TIFF_INT_FORMATS.get(typ)
            if fmt is None or count > _TIFF_MAX_PARTS:
                return ImageHeader("tiff", whole=None)
            tags[tag] = struct.unpack_from(f"{order}{count}{fmt}", data, where)
    width = tags.get(256, (None,))[0]
    height = tags.get(257, (None,))[0]
    if truncated:
        return ImageHeader("tiff", width, height, whole=False)
    offsets, counts = (tags.get(273), tags.get(279)) if 273 in tags else (tags.get(324), tags.get(325))
    if not offsets or not counts or len(offsets) != len(counts):
        return ImageHeader("tiff", width, height, whole=None)
    return ImageHeader("tiff", width, height, whole=max(o + c for o, c in zip(offsets, counts)) <= n)


def _webp(data: bytes) -> ImageHeader:
    """RIFF container: the declared size must be there; dimensions from the VP8 / VP8L / VP8X header."""
    n = len(data)
    if n < 12:
        return ImageHeader("webp", whole=False)
    whole = n >= 8 + int.from_bytes(data[4:8], "little")
    fourcc = data[12:16]
    width = height = None
    if fourcc == b"VP8 " and n >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif fourcc == b"VP8L" and n >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif fourcc == b"VP8X" and n >= 30:
        width, height = int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return ImageHeader("webp", width, height, whole=whole)
