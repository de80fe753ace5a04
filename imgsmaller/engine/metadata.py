"""Metadata: the upload minus its metadata (PNG, JPEG), whether it is lossy, and what keep_metadata
keeps and how it goes into a result. No Flask, no SQL, no other engine module.

The upload minus its metadata is the answer when nothing may beat the upload itself:
auto mode's last resort for tiny or already-optimal files, and the result for a target
at or above the upload's size in its own format. The same bytes for the pixels, without
EXIF, XMP, text, IPTC or comments.

keep_metadata (docs/api.md): the EXIF tags and XMP the choice keeps are read from the
decoded upload, re-serialised without the orientation (always applied to the pixels) and,
unless asked, without GPS; and inserted into the encoded JPEG, PNG or WebP by byte surgery
(no re-encode; an AVIF's chosen quality is encoded again carrying them, by the pipeline), so
the byte searches run with the budget less overhead() and still meet it.
"""

import re
import zlib
from dataclasses import dataclass

from PIL import Image

from imgsmaller.errors import InvalidRequestError

LOSSY_FORMATS = ("jpeg", "webp", "avif")


def is_lossy(data, fmt):
    """Whether the upload was lossily compressed: JPEG, AVIF, HEIC/HEIF (lossless HEVC is rare enough to
    ignore), and WebP unless its bitstream is VP8L (lossless)."""
    if fmt == "webp":
        return _webp_bitstream(data) != b"VP8L"
    return fmt in LOSSY_FORMATS or fmt in ("heic", "heif")


def _webp_bitstream(data):
    """The first image chunk's tag of a WebP file (b"VP8 " or b"VP8L"), or None."""
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        if kind in (b"VP8 ", b"VP8L"):
            return kind
        if kind == b"ANMF":
            pos += 8 + 16  # an animation frame: its header, then the frame's own chunks
            continue
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += 8 + length + (length & 1)  # chunks are padded to an even length
    return None


def stripped_input(data, fmt, frames, orientation):
    """The upload minus its metadata, when that is lossless and shows the same
    picture (one frame, no EXIF rotation to lose); else None."""
    if frames != 1 or orientation not in (None, 1):
        return None
    if fmt == "png":
        stripped = strip_png(data)
        return stripped if len(stripped) <= len(data) else None  # an IEND put back to a cut upload
    if fmt == "jpeg":
        return strip_jpeg(data)
    return None


# Chunks/markers that describe pixels and colour; everything else (EXIF, XMP,
# text, IPTC, comments, timestamps) is metadata and is dropped.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"pHYs"}
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def strip_png(data):
    """The same PNG without metadata chunks (lossless; for a single-frame PNG)."""
    out = [data[:8]]
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind in _PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    else:
        # An upload cut inside its IEND (which Pillow decodes and verifies) would lose it
        # here; the result must be a whole PNG (found by tests/test_fuzz.py).
        out.append(_IEND)
    return b"".join(out)


def strip_jpeg(data):
    """The same JPEG without APP1 (EXIF/XMP), APP13 (IPTC), COM and other APPn,
    keeping JFIF (APP0), ICC (APP2) and Adobe (APP14, needed for colour)."""
    out = [data[:2]]
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos:pos + 2 + length]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out.append(data[pos:])
            return b"".join(out)
        is_app = 0xE0 <= marker <= 0xEF
        if (not is_app and marker != 0xFE) or marker in (0xE0, 0xEE) or \
                (marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\x00"):
            out.append(segment)
        pos += 2 + length
    return None  # not a well-formed JPEG header: do not guess


# -- the metadata a request keeps (keep_metadata) ------------------------------------

# none: today's answer (ICC only); copyright: who made it and when; all: EXIF and XMP
# without where it was taken; all_with_location: with the GPS position too.
KEEP_METADATA = ("none", "copyright", "all", "all_with_location")
_ORIENTATION, _EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x0112, 0x8769, 0x8825, 0xA005
# Artist, Copyright, DateTime (IFD0); DateTimeOriginal, DateTimeDigitized, their time zones
# and sub-seconds (the Exif IFD): Tinify's "copyright" and "creation".
_COPYRIGHT_TAGS = {0x013B, 0x8298, 0x0132}
_CREATION_TAGS = {0x9003, 0x9004, 0x9010, 0x9011, 0x9012, 0x9290, 0x9291, 0x9292}
# Tags that describe the upload's pixels or file layout, not the picture: never carried
# (orientation is applied to the pixels; the size and thumbnail pointers would be wrong).
_LAYOUT_TAGS = {_ORIENTATION, 0x0100, 0x0101, 0x0111, 0x0117, 0x0201, 0x0202, 0xA002, 0xA003, _INTEROP_IFD}
_EXIF_NS = "http://ns.adobe.com/exif/1.0/"
_TIFF_NS = "http://ns.adobe.com/tiff/1.0/"
# Segment/chunk limits: one JPEG APP1 segment holds 65533 bytes after its length field.
_JPEG_EXIF_MAX = 65533 - 2 - 6
_XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_XMP_MAX = 65533 - 2 - len(_XMP_JPEG_HEADER)
# AVIF's boxes for an EXIF and an XMP item beyond their own bytes, measured on a 16x16 encode
# (the same at 300x200 and 1200x900, Pillow 13's libavif): 141 bytes; this leaves room to spare.
_AVIF_BOXES = 160


@dataclass(frozen=True)
class Kept:
    """The metadata a result carries besides its ICC profile: a TIFF-structured EXIF block and XMP text."""

    exif: bytes | None
    xmp: bytes | None


def kept_metadata(image, choice):
    """What `choice` keeps of a decoded upload's metadata (read before normalise drops it); None: nothing."""
    if choice not in KEEP_METADATA:
        raise InvalidRequestError(f"Invalid keep_metadata: use one of {', '.join(KEEP_METADATA)}.")
    if choice == "none":
        return None
    try:
        exif = _kept_exif(image.getexif(), choice)
    except Exception:  # an unreadable EXIF block is dropped, as normalise ignores it
        exif = None
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    xmp = _kept_xmp(xmp, choice) if choice != "copyright" and xmp else None
    return Kept(exif, xmp) if exif or xmp else None


def _kept_exif(source, choice):
    out = Image.Exif()
    everything = choice != "copyright"
    for tag, value in source.items():
        if tag in (_EXIF_IFD, _GPS_IFD) or tag in _LAYOUT_TAGS:
            continue
        if everything or tag in _COPYRIGHT_TAGS:
            out[tag] = value
    sub = {tag: value for tag, value in source.get_ifd(_EXIF_IFD).items()
           if tag not in _LAYOUT_TAGS and (everything or tag in _CREATION_TAGS)}
    if sub:
        out[_EXIF_IFD] = sub
    gps = source.get_ifd(_GPS_IFD) if choice == "all_with_location" else {}
    if gps:
        out[_GPS_IFD] = dict(gps)
    if not len(out):
        return None
    block = out.tobytes()
    return block[6:] if block.startswith(b"Exif\x00\x00") else block


def _kept_xmp(xmp, choice):
    """The XMP packet without tiff:Orientation and, unless asked, without the exif:GPS* properties."""
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    names = [(_TIFF_NS, r"Orientation")]
    if choice != "all_with_location":
        names.append((_EXIF_NS, r"GPS\w*"))
    for namespace, local in names:
        for prefix in set(re.findall(r'xmlns:([\w.-]+)\s*=\s*["\']' + re.escape(namespace), text)):
            name = re.escape(prefix) + ":" + local
            text = re.sub(r"\s" + name + r"\s*=\s*(\"[^\"]*\"|'[^']*')", "", text)
            text = re.sub(r"<(" + name + r")\b[^>]*?(/>|>.*?</\1\s*>)", "", text, flags=re.DOTALL)
    return text.encode("utf-8")


def _fits(kept, fmt):
    """The parts of `kept` the format's containers can hold (one JPEG segment each)."""
    if fmt != "jpeg":
        return kept.exif, kept.xmp
    exif = kept.exif if kept.exif and len(kept.exif) <= _JPEG_EXIF_MAX else None
    xmp = kept.xmp if kept.xmp and len(kept.xmp) <= _JPEG_XMP_MAX else None
    return exif, xmp


def overhead(kept, fmt):
    """How many bytes attach() adds to a `fmt` file without EXIF/XMP (0 for None): exactly for JPEG
    and PNG; for WebP at most (18 fewer when the encoder already wrote the extended header); for
    AVIF, whose encode must carry them (see `parts`), at most."""
    if kept is None:
        return 0
    exif, xmp = _fits(kept, fmt)
    if fmt == "jpeg":
        return (4 + 6 + len(exif) if exif else 0) + (4 + len(_XMP_JPEG_HEADER) + len(xmp) if xmp else 0)
    if fmt == "png":
        return (12 + len(exif) if exif else 0) + (12 + len(_PNG_XMP_HEADER) + len(xmp) if xmp else 0)
    if fmt == "avif":
        return _AVIF_BOXES + sum(len(part) for part in (exif, xmp) if part)
    padded = sum(8 + len(part) + (len(part) & 1) for part in (exif, xmp) if part)
    return padded + _VP8X_BYTES  # at most: a simple WebP gains a VP8X header


def parts(kept, fmt):
    """(exif, xmp) of `kept` that a `fmt` file can hold, for an encoder that writes them itself (AVIF)."""
    return _fits(kept, fmt)


def attach(data, fmt, kept, *, has_alpha=False):
    """The file with `kept` inserted (JPEG APP1 segments, PNG eXIf/iTXt chunks, WebP EXIF/XMP chunks)."""
    if kept is None:
        return data
    exif, xmp = _fits(kept, fmt)
    if fmt == "jpeg":
        segments = b""
        if exif:
            segments += _segment(0xE1, b"Exif\x00\x00" + exif)
        if xmp:
            segments += _segment(0xE1, _XMP_JPEG_HEADER + xmp)
        pos = 2
        if data[2:4] == b"\xff\xe0":  # after JFIF, which must come first
            pos = 4 + int.from_bytes(data[4:6], "big")
        return data[:pos] + segments + data[pos:]
    if fmt == "png":
        chunks = (_chunk(b"eXIf", exif) if exif else b"") + (_chunk(b"iTXt", _PNG_XMP_HEADER + xmp) if xmp else b"")
        pos = _first_png_chunk(data, b"IDAT")  # eXIf must come before the image data
        return data[:pos] + chunks + data[pos:]
    if fmt == "webp":
        return _webp_with(data, exif, xmp, has_alpha)
    return data


def _segment(marker, body):
    return bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body


_PNG_XMP_HEADER = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"  # keyword, uncompressed, no language, no translation


def _chunk(kind, body):
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _first_png_chunk(data, kind):
    pos = 8
    while pos + 8 <= len(data) and data[pos + 4:pos + 8] != kind:
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return pos


_VP8X_BYTES = 18


def _webp_chunk(kind, body):
    return kind + len(body).to_bytes(4, "little") + body + (b"\x00" if len(body) & 1 else b"")


def _webp_with(data, exif, xmp, has_alpha):
    """A WebP with EXIF and XMP chunks appended (their place in the extended format), VP8X flags set."""
    body = data[12:]
    flags = (0x08 if exif else 0) | (0x04 if xmp else 0)
    if body[:4] == b"VP8X":
        body = body[:8] + bytes((body[8] | flags,)) + body[9:]
    else:  # a simple file: the extended header needs the canvas size from the bitstream
        width, height = _webp_size(body)
        flags |= 0x10 if has_alpha else 0
        header = bytes((flags, 0, 0, 0)) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        body = _webp_chunk(b"VP8X", header) + body
    body += (_webp_chunk(b"EXIF", exif) if exif else b"") + (_webp_chunk(b"XMP ", xmp) if xmp else b"")
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body


def _webp_size(chunk):
    """Width and height of a simple WebP's VP8 or VP8L bitstream."""
    payload = chunk[8:]
    if chunk[:4] == b"VP8L":
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return int.from_bytes(payload[6:8], "little") & 0x3FFF, int.from_bytes(payload[8:10], "little") & 0x3FFF
