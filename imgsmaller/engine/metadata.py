"""The upload minus its metadata (PNG, JPEG), and whether it is lossy. No Flask, no SQL, no other engine module.

The answer when nothing may beat the upload itself: auto mode's last resort for
tiny or already-optimal files, and the result for a target at or above the
upload's size in its own format. The same bytes for the pixels, without EXIF,
XMP, text, IPTC or comments.
"""

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
