"""Sniff, validate and decode an upload; orient and normalise its pixels. No Flask, no SQL.

Only the allowed decoders can ever run: the format comes from the magic
bytes and the matching Pillow plugin class is called directly (HEIC/HEIF:
pillow-heif's, a binding of libheif + libde265, when that wheel is installed). (Image.open
would also apply Pillow's process-global decompression-bomb limit and warning
filters; we enforce our own per-call pixel limit instead, from the header,
before a single pixel is decoded.)
"""

import contextlib
import io
import logging
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import AvifImagePlugin, Image, ImageCms, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from imgsmaller.errors import InvalidImageError, InvalidRequestError, UnsupportedImageError

from .avif_frames import check_avif_frames
from .heif_limits import check_heif_sizes

try:
    import pillow_heif
except ImportError:  # optional: without the wheel, HEIC/HEIF uploads are a 415
    pillow_heif = None
else:
    # Once per process. No thumbnails (Image.draft would decode one instead of the
    # image), depth maps or auxiliary images: only the primary image is ever used.
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

log = logging.getLogger(__name__)

HEIF_FORMATS = ("heic", "heif") if pillow_heif else ()
SUPPORTED_INPUT = ("jpeg", "png", "webp", "avif", *HEIF_FORMATS)
# What `original` gives for inputs browsers do not show (issue 13).
ORIGINAL_OUTPUT = {"heic": "jpeg", "heif": "jpeg"}
SEND = "Send JPEG, PNG, WebP, AVIF or HEIC." if pillow_heif else "Send JPEG, PNG, WebP or AVIF."

_FACTORIES = {
    "jpeg": JpegImagePlugin.jpeg_factory,
    "png": PngImagePlugin.PngImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "avif": AvifImagePlugin.AvifImageFile,
    **dict.fromkeys(HEIF_FORMATS, getattr(pillow_heif, "HeifImageFile", None)),
}
# ISO-BMFF brands (ftyp) of HEIF stills: HEVC-coded ones are HEIC, the rest (mif1 /
# msf1 alone: another codec) plain HEIF. AVIF's brands are checked first.
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
_HEIF_BRANDS = (b"mif1", b"msf1", b"mif2")

# Recognised but unsupported: named in the 415 message so the user knows why.
_KNOWN_OTHERS = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"), (b"<?xml", "SVG"), (b"<svg", "SVG"),
)

# Errors Pillow raises for malformed data, at open or at load. Its AVIF plugin
# raises RuntimeError ("Missing or empty image item", "Not implemented",
# "Decoding of color planes failed", "Reformat failed") and ZeroDivisionError (a
# track timescale of 0); tests/data holds a reproducer of each (issue 14, finding 9).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, IndexError, TypeError, KeyError,
                  EOFError, struct.error, RuntimeError, ArithmeticError,
                  Image.DecompressionBombError, MemoryError)

@dataclass(frozen=True)
class Probe:
    format: str        # one of SUPPORTED_INPUT
    width: int         # as stored, before EXIF orientation
    height: int
    frames: int        # animated inputs: only the first frame is ever used
    has_alpha: bool
    orientation: int = 1  # EXIF orientation (5-8: shown with width and height swapped)


def sniff(data):
    """The input format from the magic bytes, or UnsupportedImageError (415)."""
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _sniff_iso_bmff(data)
    if not head:
        raise UnsupportedImageError("The file is empty.")
    for magic, name in _KNOWN_OTHERS:
        if head.startswith(magic):
            raise UnsupportedImageError(f"{name} files are not supported. {SEND}")
    raise UnsupportedImageError(f"The file is not a supported image. {SEND}")


def _sniff_iso_bmff(data):
    """AVIF, HEIC or HEIF from the major brand, then the compatible brands, within the ftyp box."""
    size = int.from_bytes(data[:4], "big")
    brands = bytes(data[8:min(max(size, 16), 256)])
    brands = [brands[i:i + 4] for i in range(0, len(brands) - 3, 4)]
    if any(brand in (b"avif", b"avis") for brand in brands):
        return "avif"
    heif = "heic" if any(brand in _HEIC_BRANDS for brand in brands) else \
        "heif" if any(brand in _HEIF_BRANDS for brand in brands) else None
    if heif and heif in HEIF_FORMATS:
        return heif
    if heif:
        raise UnsupportedImageError(f"{heif.upper()} files are not supported by this server. {SEND}")
    raise UnsupportedImageError(f"MP4, QuickTime and other ISO media files are not supported. {SEND}")


def open_image(data, *, max_pixels):
    """Validate and decode the first frame; return (PIL image, Probe). Raises 415/422 errors.

    This is the one place where a decoder meets untrusted bytes, so it decides every
    decoder error: the known kinds (_DECODE_ERRORS) and any other exception raised
    while opening or decoding are the file's fault (422), never a 500.
    """
    fmt, image = _open_header(data, max_pixels)
    facts = _decode(fmt, image, data, load=fmt != "webp")
    if fmt == "webp":
        image = _webp_pixels(image, data, facts.frames)
    return image, facts


def _open_header(data, max_pixels):
    """(format, unloaded image) once the header's size is within `max_pixels`; nothing decoded yet."""
    fmt = sniff(data)
    try:
        image = _FACTORIES[fmt](io.BytesIO(data), "")
    except Exception as error:
        raise _corrupt(fmt, "is corrupt and cannot be read", error) from error
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"Image is {width}x{height} pixels; it has no pixels.")
    if width * height > max_pixels:
        raise InvalidImageError(f"Image is {width}x{height} pixels; the limit is {max_pixels}.")
    if fmt == "avif":
        check_avif_frames(data, max_pixels=max_pixels)  # what the AV1 decoder will allocate
    elif fmt in HEIF_FORMATS:
        check_heif_sizes(data, image.info.get("tiling"), max_pixels=max_pixels)  # what libheif will allocate
    return fmt, image


def _decode(fmt, image, data, load=True):
    """Decode the first frame of an image from _open_header (`load`: else only its facts); its Probe."""
    width, height = image.size  # as the header says, before decoding
    try:
        frames = int(getattr(image, "n_frames", 1) or 1)
        if fmt == "png":
            # Checks every chunk's CRC, which decoding alone does not.
            PngImagePlugin.PngImageFile(io.BytesIO(data), "").verify()
        if load:
            image.load()  # the first frame only
    except Exception as error:
        raise _corrupt(fmt, "is corrupt or truncated and cannot be decoded", error) from error
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        orientation = int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block: normalise ignores it too
        orientation = 1
    return Probe(fmt, width, height, frames, has_alpha, orientation)


def _webp_pixels(image, data, frames):
    """The first frame of a WebP from _open_header, decoded. A still picture goes through OpenCV's libwebp, which
    decodes into one array: the plugin's pixels (tests/test_engine.py) without its animation decoder's two canvases
    and copy of the frame (12 MP: 188 MiB at the peak, 142 held while the image is open). Animations, and files
    OpenCV does not decode as the plugin would, go through the plugin (and its errors)."""
    channels = 4 if image.mode == "RGBA" else 3
    array = None
    if frames == 1:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.shape != (image.height, image.width, channels):
        try:
            image.load()
        except Exception as error:
            raise _corrupt("webp", "is corrupt or truncated and cannot be decoded", error) from error
        return image
    cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if channels == 4 else cv2.COLOR_BGR2RGB, dst=array)
    pixels = Image.fromarray(array)
    del array
    pixels.info = dict(image.info)
    image.close()
    return pixels


def _corrupt(fmt, what, error):
    if not isinstance(error, _DECODE_ERRORS):
        # Still the file's fault, but a kind not seen before: worth a look.
        log.warning("%s decoder raised %s: %s", fmt.upper(), type(error).__name__, error)
    return InvalidImageError(f"The {fmt.upper()} image {what}.")


# Peak memory of decoding one pixel (probe's increase in peak RSS over 10 MP images, Pillow
# 13.0): JPEG and PNG decode straight into Pillow's 4-byte pixels; Pillow's WebP plugin goes
# through libwebp's animation decoder (its canvas, then a copy: 16-19 B, lossless the most);
# libavif decodes YUV planes, then converts to RGB(A) (9.5 B, 12 with alpha); libheif
# likewise, then pillow-heif copies into Pillow (8.3 B; a 10-bit file 9.4, a grid 8.2,
# alpha 10.1: 11).
DECODE_BYTES_PER_PIXEL = {"jpeg": 4, "png": 4, "webp": 19, "avif": 12, "heic": 11, "heif": 11}


def probe(data, *, max_pixels, budget=None):
    """Full validation of an upload, cheap enough to run before answering 202.

    `budget(nbytes)`, when given, is a context manager held while the pixels are decoded,
    with the decode's expected peak memory (the caller's bound on decodes in flight); it is
    entered after the header check, so a refused size never waits for it.
    """
    fmt, image = _open_header(data, max_pixels)
    memory = image.width * image.height * DECODE_BYTES_PER_PIXEL[fmt]
    with budget(memory) if budget else contextlib.nullcontext():
        try:
            return _decode(fmt, image, data)
        finally:
            image.close()


# The longest side each output codec can write, measured with this engine's
# encoders (issue 14, finding 10): libwebp refuses 16384 ("exceeds WebP limit of
# 16383 pixels"); jpegli and libjpeg-turbo refuse 65501+ ("Maximum supported image
# dimension is 65500 pixels"); libaom encodes up to 65536, but libavif's decoder,
# ours included, refuses sides over 32768 (its default imageDimensionLimit).
OUTPUT_MAX_SIDE = {"jpeg": 65500, "webp": 16383, "avif": 32768, "png": 2**31 - 1}


def check_output_limits(facts, output, resize=None):
    """Refuse (422), before any work is queued, an image the output codec cannot hold.

    `facts` is the Probe; `output` the requested format (jpeg, jpg, png, webp, avif,
    original or None for original); `resize` the request's resize.Resize, or None.
    """
    fmt = ORIGINAL_OUTPUT.get(facts.format, facts.format) if output in (None, "original") else \
        {"jpg": "jpeg"}.get(output, output)
    limit = OUTPUT_MAX_SIDE.get(fmt)
    side = max(facts.width, facts.height)
    if resize is not None:
        shown = (facts.height, facts.width) if facts.orientation in (5, 6, 7, 8) else (facts.width, facts.height)
        side = max(resize.size_for(*shown))
    if limit is not None and side > limit:
        raise InvalidRequestError(
            f"Image is {facts.width}x{facts.height} pixels; {fmt.upper()} output is limited to "
            f"{limit} pixels per side. Choose another output format or resize the image first.")

_SRGB = ImageCms.createProfile("sRGB")


def normalise(image):
    """Apply EXIF orientation and bring pixels to 8-bit RGB or RGBA; returns (image, icc).

    The ICC profile is kept for RGB images. Other colour spaces (CMYK, greyscale
    profiles) are converted to sRGB, since their profile cannot describe RGB
    pixels. An alpha channel that is fully opaque is dropped. Metadata is not
    carried: the returned image's `info` is empty.
    """
    icc = image.info.get("icc_profile") or None
    orientation = 1
    try:
        orientation = int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not fail the image; ignore it
        orientation = 1
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = image.point(lambda v: v / 256).convert("L") if mode != "F" else image.convert("L")
        mode = "L"
    if mode == "CMYK":
        converted = None
        if icc:
            try:
                converted = ImageCms.profileToProfile(
                    image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB, outputMode="RGB")
            except Exception:  # an unusable profile: fall back to Pillow's naive conversion
                converted = None
        image = converted if converted is not None else image.convert("RGB")
        icc = None
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode != "RGB":
        image = image.convert("RGB")
    if mode in ("L", "LA", "1", "I") and icc:
        icc = None  # a grey profile cannot describe RGB pixels; grey data is ~sRGB
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    if method is not None:
        image = image.transpose(method)
    # No copy when nothing changed: the caller owns the decoded image and drops
    # it; a copy would double the peak memory of a 50 MP upload.
    if getattr(image, "n_frames", 1) > 1:
        # A multi-frame file still: the frame decoded as a plain image sharing its pixels.
        # Pillow's AVIF encoder walks every frame of what it is given, which decoded the
        # other images of a HEIC burst and wrote frame 0 instead of the primary image.
        image = image._new(image.im)
    image.info = {}
    return image, icc


def flatten(image, background=(255, 255, 255)):
    """RGBA -> RGB on a solid background (JPEG has no alpha)."""
    if image.mode != "RGBA":
        return image
    flat = Image.new("RGB", image.size, background)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


__all__ = ["Probe", "probe", "open_image", "normalise", "flatten", "sniff", "check_output_limits",
           "check_avif_frames", "SUPPORTED_INPUT", "OUTPUT_MAX_SIDE", "DECODE_BYTES_PER_PIXEL"]
