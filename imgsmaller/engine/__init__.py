"""The compression engine: bytes + options in, bytes + facts out. Imports no Flask, no SQL.

    probe(data, max_pixels=...) -> Probe       validate before answering 202
    compress(data, output=..., target_size=..., max_pixels=...) -> Result

Pipeline: sniff + validate + decode the first frame (probe.py) -> apply EXIF
orientation, 8-bit RGB(A), keep the ICC profile, drop all other metadata ->
flatten on white for JPEG -> either fit a byte target (search.py: quality
search, then downscale below a quality floor) or auto (auto.py: the smallest
encode with SSIMULACRA2 >= AUTO_MIN_SCORE) -> Result with the score.
It is thread-safe: no process-global state is touched per call.
"""

import math
from dataclasses import dataclass, field

from PIL import Image

from imgsmaller.errors import InvalidRequestError, TargetUnreachableError

from . import auto, codecs, search
from .probe import SUPPORTED_INPUT, Probe, flatten, normalise, open_image, probe
from .score import Scorer

SUPPORTED_OUTPUT = ("jpeg", "png", "webp", "avif", "original")

# Quality floors: below these the codec's artefacts cost more than a smaller
# picture does, so the target search downscales instead (bench/RESULTS.md,
# "Quality floor"). Keyed by encoder name prefix.
QUALITY_FLOOR = {"jpegli": 40, "libjpeg-turbo": 30, "libwebp": 25, "libavif/aom": 20,
                 "imagequant": 30, "pillow-quantize": 30}
# The smallest picture the target search will downscale to (shorter side).
MIN_SIDE = 16
MAX_SCALES = 8


@dataclass(frozen=True)
class Result:
    data: bytes
    format: str
    width: int
    height: int
    original_format: str
    original_width: int
    original_height: int
    original_bytes: int
    quality_score: float | None
    quality_metric: str = "ssimulacra2"
    encodes: int = 0
    settings: dict = field(default_factory=dict)


def _output_format(output, input_format):
    output = (output or "original").lower()
    if output == "jpg":
        output = "jpeg"
    if output not in SUPPORTED_OUTPUT:
        raise InvalidRequestError(f"Unsupported output format {output!r}; use one of jpeg, jpg, png, webp, avif, original.")
    return input_format if output == "original" else output


def _encoders(fmt, image, icc):
    """Encoders to try for a format, best quality per byte first."""
    if fmt == "jpeg":
        encoders = [codecs.JpegEncoder(image, icc, backend="jpegli")]
        if encoders[0].backend == "jpegli":
            encoders.append(codecs.JpegEncoder(image, icc, backend="pillow"))
        return encoders
    if fmt == "webp":
        return [codecs.WebpEncoder(image, icc)]
    if fmt == "avif":
        return [codecs.AvifEncoder(image, icc)]
    return [codecs.PngEncoder(image, icc)]


def _floor(encoder):
    for prefix, q in QUALITY_FLOOR.items():
        if encoder.name.startswith(prefix):
            return q
    return encoder.qmin


def _start(encoder, image, target):
    """First quality to try, from the bits per pixel the target allows."""
    bpp = target * 8 / (image.width * image.height)
    # Rough photo curves measured on the corpus: q ~ 55 at 1 bpp for JPEG.
    q = 55 + 25 * math.log2(max(bpp, 1e-3))
    if encoder.format == "avif":
        q -= 10
    return int(min(encoder.qmax - 5, max(_floor(encoder), q)))


def _fit_target(image, icc, fmt, target):
    """Highest quality that fits, downscaling when even the floor does not. -> (data, image, settings, encodes)"""
    scaled = image
    encodes = 0
    for _ in range(MAX_SCALES):
        at_min = min(scaled.size) <= MIN_SIDE
        smallest = None
        encoders = _encoders(fmt, scaled, icc)
        if fmt == "png":
            data = encoders[0].lossless()
            encodes += 1
            if len(data) <= target:
                return data, scaled, {"codec": "png-lossless" + ("+oxipng" if codecs.oxipng else "")}, encodes
        for encoder in encoders:
            lo = encoder.qmin if at_min else _floor(encoder)
            found = search.fit(encoder.encode, target, lo, encoder.qmax, start=_start(encoder, scaled, target))
            encodes += found.encodes
            if found.quality is not None:
                return found.data, scaled, encoder.settings(found.quality), encodes
            smallest = found.size_at_lo if smallest is None else min(smallest, found.size_at_lo)
        if at_min:
            break
        # Size is about proportional to the pixel count: shrink the area by
        # target/smallest, with a margin since header bytes do not shrink.
        factor = math.sqrt(target / smallest) * 0.92
        factor = min(factor, 0.9) * min(scaled.width / image.width, 1.0)
        short = min(image.size)
        factor = max(factor, MIN_SIDE / short)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        scaled = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    raise TargetUnreachableError(
        f"The target size of {target} bytes cannot be reached for this image, even at {scaled.width}x{scaled.height} pixels.")


def _auto(image, icc, fmt, input_format, input_bytes):
    """-> (data, settings, encodes, score)"""
    scorer = Scorer(image)
    encodes = 0
    if fmt == "png":
        encoder = codecs.PngEncoder(image, icc)
        best = encoder.lossless()
        settings, score = {"codec": "png-lossless" + ("+oxipng" if codecs.oxipng else "")}, 100.0
        palette = encoder.encode(90)
        palette_score = scorer.score(auto.decode(palette))
        if palette_score >= auto.AUTO_MIN_SCORE and len(palette) < len(best):
            best, settings, score = palette, encoder.settings(90), palette_score
        encodes = encoder.encodes
    else:
        encoder = _encoders(fmt, image, icc)[0]

        def trial(q):
            data = encoder.encode(q)
            return data, scorer.score(auto.decode(data))

        found = auto.lowest_passing(trial, encoder.qmin, encoder.qmax, auto.AUTO_MIN_SCORE, auto._START[fmt])
        encodes = encoder.encodes
        if found is None:
            best = encoder.encode(encoder.qmax)
            score = scorer.score(auto.decode(best))
            settings = encoder.settings(encoder.qmax)
        else:
            q, best, score, _ = found
            settings = encoder.settings(q)
        encodes = encoder.encodes
    if fmt == input_format and len(best) >= input_bytes:
        # Never larger than the input: the best quality that is smaller.
        for encoder in _encoders(fmt, image, icc):
            found = search.fit(encoder.encode, input_bytes - 1, encoder.qmin, encoder.qmax, start=encoder.qmax - 10)
            encodes += found.encodes
            if found.quality is not None:
                best, settings = found.data, dict(encoder.settings(found.quality), capped_by_input=True)
                score = scorer.score(auto.decode(best))
                break
        else:
            raise TargetUnreachableError("No encoding of this image is smaller than the input.")
    settings["mode"] = "auto"
    settings["min_score"] = auto.AUTO_MIN_SCORE
    return best, settings, encodes, score


def compress(data, *, output="original", target_size=None, max_pixels):
    """Compress one image; see the module docstring. Raises the errors of imgsmaller.errors."""
    decoded, facts = open_image(data, max_pixels=max_pixels)
    fmt = _output_format(output, facts.format)
    image, icc = normalise(decoded)
    if image is not decoded:
        decoded.close()
    del decoded
    if fmt == "jpeg":
        image = flatten(image)
    if target_size is None:
        out, settings, encodes, score = _auto(image, icc, fmt, facts.format, len(data))
        width, height = image.size
    else:
        target = int(target_size)
        if target < 1:
            raise InvalidRequestError("target_size must be positive.")
        out, scaled, settings, encodes = _fit_target(image, icc, fmt, target)
        width, height = scaled.size
        if scaled is not image:
            settings["scale"] = round(width / image.width, 4)
        scaled = None
        score = _score_result(image, out)
    return Result(
        data=out, format=fmt, width=width, height=height,
        original_format=facts.format, original_width=facts.width, original_height=facts.height,
        original_bytes=len(data), quality_score=None if score is None else round(float(score), 2),
        encodes=encodes, settings=settings)


def _score_result(image, out):
    """SSIMULACRA2 of the output (upscaled back if it was downscaled) against the original."""
    decoded = auto.decode(out)
    if decoded.size != image.size:
        decoded = decoded.resize(image.size, Image.Resampling.LANCZOS)
    return Scorer(image).score(decoded)


__all__ = ["probe", "compress", "Probe", "Result", "SUPPORTED_INPUT", "SUPPORTED_OUTPUT"]
