"""Per output format: the encoders to try, lossless settings, graphics, proxies. No Flask, no SQL; only encoders,
png_encoder, score, and decode's ORIGINAL_OUTPUT.

The measurements behind the choices (encoder order, AVIF speed, proxy sizes)
are in docs/engine.md.
"""

from imgsmaller.errors import InvalidRequestError

from . import encoders, png_encoder
from .decode import ORIGINAL_OUTPUT
from .score import tiles

SUPPORTED_OUTPUT = ("jpeg", "png", "webp", "avif", "original")

# Above this many pixels a search runs first on a proxy mosaic of about
# SEARCH_PROXY_PIXELS of full-resolution tiles (target.best_fit, auto.encode_auto).
SEARCH_PROXY_MIN_PIXELS = 3_000_000
SEARCH_PROXY_MIN_PIXELS_AVIF = 1_200_000   # AVIF encodes cost 10x JPEG's
SEARCH_PROXY_PIXELS = 600_000
# "Graphic" = at most this many colours; lossless WebP is then tried too.
GRAPHIC_MAX_COLOURS = 4096
GRAPHIC_MAX_PIXELS = 4_000_000


def output_format(output, input_format):
    """The format to encode to: `output` as asked ("jpg" = "jpeg", "original" = the input's,
    or JPEG for an input browsers do not show: HEIC, HEIF)."""
    output = (output or "original").lower()
    if output == "jpg":
        output = "jpeg"
    if output not in SUPPORTED_OUTPUT:
        raise InvalidRequestError(
            f"Unsupported output format {output!r}; use one of jpeg, jpg, png, webp, avif, original.")
    return ORIGINAL_OUTPUT.get(input_format, input_format) if output == "original" else output


def is_conversion(output, input_format):
    """Whether `original` means another format than the input's (HEIC -> JPEG): the result
    is then not held to the upload's size (issue 13)."""
    return (output or "original").lower() == "original" and input_format in ORIGINAL_OUTPUT


def encoders_for(fmt, image, icc, smallest=False, job_pixels=None):
    """Encoders to try for a format, best quality per byte first. `smallest`
    adds libjpeg-turbo after jpegli, whose files stay large even at quality 1
    (docs/engine.md), for when nothing but the lowest qualities can fit. AVIF's
    speed and PNG's oxipng level follow the job's size (`job_pixels`, the original's), not the
    downscaled picture's, so a 12 MP job stays within its time budget."""
    if fmt == "jpeg":
        chosen = [encoders.JpegEncoder(image, icc, backend="jpegli")]
        if smallest and chosen[0].backend == "jpegli":
            chosen.append(encoders.JpegEncoder(image, icc, backend="pillow"))
        return chosen
    if fmt == "webp":
        return [encoders.WebpEncoder(image, icc)]
    if fmt == "avif":
        pixels = max(job_pixels or 0, image.width * image.height)
        return [encoders.AvifEncoder(image, icc, speed=encoders.avif_speed(pixels))]
    pixels = max(job_pixels or 0, image.width * image.height)
    return [png_encoder.PngEncoder(image, icc, level=png_encoder.oxipng_level(pixels))]


def is_graphic(image):
    """Few colours (screenshots, logos, icons), where lossless codecs shine."""
    return image.width * image.height <= GRAPHIC_MAX_PIXELS and image.getcolors(GRAPHIC_MAX_COLOURS) is not None


def lossless_settings(fmt):
    # encoders.oxipng is read per call: it is None when the wheel is missing
    # (and tests switch it off).
    if fmt == "png":
        return {"codec": "png-lossless" + ("+oxipng" if encoders.oxipng else ""), "lossless": True}
    return {"codec": "libwebp", "lossless": True}


def proxy_boxes(image, fmt):
    """The tiles of a search proxy mosaic for a big image (score.mosaic), or None
    when the image is small enough to search on directly."""
    limit = SEARCH_PROXY_MIN_PIXELS_AVIF if fmt == "avif" else SEARCH_PROXY_MIN_PIXELS
    if image.width * image.height <= limit:
        return None
    return tiles(image.width, image.height, budget=SEARCH_PROXY_PIXELS)
