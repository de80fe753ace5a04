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
import time
from dataclasses import dataclass, field

from PIL import Image

from imgsmaller.errors import InvalidRequestError, TargetUnreachableError

from . import auto, codecs, search
from .probe import SUPPORTED_INPUT, Probe, check_output_limits, flatten, normalise, open_image, probe
from .score import Scorer, mosaic, tiles

SUPPORTED_OUTPUT = ("jpeg", "png", "webp", "avif", "original")

# Quality floors: below these the codec's artefacts cost more than a smaller
# picture does, so the target search downscales instead (bench/RESULTS.md,
# "Quality floor"). Keyed by encoder name prefix.
QUALITY_FLOOR = {"jpegli": 20, "libjpeg-turbo": 40, "libwebp": 20, "libavif/aom": 30,
                 "imagequant": 30, "pillow-quantize": 30}
# Above this many pixels the target search first runs on a proxy mosaic of
# about SEARCH_PROXY_PIXELS (see _search); full-size encodes are then capped.
SEARCH_PROXY_MIN_PIXELS = 3_000_000
SEARCH_PROXY_MIN_PIXELS_AVIF = 1_200_000   # AVIF encodes cost 10x JPEG's
SEARCH_PROXY_PIXELS = 600_000
# mozjpeg's lossless repack of a jpegli file: about this fraction of its size
# (the first guess only; each real encode measures it).
JPEG_REPACK_RATIO = 0.88
BIG_AIM = 0.96
BIG_CLOSE_ENOUGH = 0.94
# Full-size encodes allowed per big-image search: AVIF costs ~1.5 s per 12 MP
# encode even at speed 9 (bench/RESULTS.md), so it gets fewer.
BIG_MAX_ENCODES = {"avif": 2}
BIG_MAX_ENCODES_DEFAULT = 4
DOWNSCALED_START_ABOVE_FLOOR = 6
# After a downscale, lossless is not retried when the last lossless size per
# pixel predicts more than this multiple of the target.
LOSSLESS_HOPELESS = 1.3
# Palette PNG qualities tried, best first (search.ladder).
PNG_LADDER = (100, 98, 96, 93, 90, 85, 80, 70, 60, 50, 40, 30)
# The smallest picture the target search will downscale to (shorter side).
MIN_SIDE = 16
# "Graphic" = at most this many colours; lossless WebP is then tried too.
GRAPHIC_MAX_COLOURS = 4096
GRAPHIC_MAX_PIXELS = 4_000_000
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


def _encoders(fmt, image, icc, smallest=False, job_pixels=None):
    """Encoders to try for a format, best quality per byte first. `smallest`
    adds libjpeg-turbo after jpegli, whose files stay large even at quality 1
    (CODECS.md), for when nothing but the lowest qualities can fit. AVIF's
    speed follows the job's size (`job_pixels`, the original's), not the
    downscaled picture's, so a 12 MP job stays within its time budget."""
    if fmt == "jpeg":
        encoders = [codecs.JpegEncoder(image, icc, backend="jpegli")]
        if smallest and encoders[0].backend == "jpegli":
            encoders.append(codecs.JpegEncoder(image, icc, backend="pillow"))
        return encoders
    if fmt == "webp":
        return [codecs.WebpEncoder(image, icc)]
    if fmt == "avif":
        pixels = max(job_pixels or 0, image.width * image.height)
        return [codecs.AvifEncoder(image, icc, speed=codecs.avif_speed(pixels))]
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


def _proxy_min_pixels(fmt):
    return SEARCH_PROXY_MIN_PIXELS_AVIF if fmt == "avif" else SEARCH_PROXY_MIN_PIXELS


def _search(encoder, target, lo, hi, start=None):
    """The highest quality that fits, with as few real encodes as the encoder allows.

    Big images: a cheap proxy, a mosaic of full-resolution tiles (same detail
    per pixel), whose size times the pixel ratio predicts the full image's.
    jpegli + mozjpeg: the raw jpegli size predicts the repacked size (mozjpeg's
    pass costs 6x the encode). Each real encode re-calibrates the prediction
    (real / predicted) and the next quality comes from the predictor again, so
    most searches need one to three real encodes. Otherwise: search.fit.
    """
    image = encoder.image
    start = _start(encoder, image, target) if start is None else start
    if image.width * image.height > _proxy_min_pixels(encoder.format):
        proxy = encoder.clone(mosaic(image, tiles(image.width, image.height, budget=SEARCH_PROXY_PIXELS)))
        ratio = image.width * image.height / (proxy.image.width * proxy.image.height)
        return _predicted_search(encoder, proxy.encode, lambda: proxy.encodes, ratio, target, lo, hi, start,
                                 aim=BIG_AIM, close_enough=BIG_CLOSE_ENOUGH, early_exit=True,
                                 max_real=BIG_MAX_ENCODES.get(encoder.format, BIG_MAX_ENCODES_DEFAULT))
    if getattr(encoder, "can_predict", False):
        raw = {"n": 0}

        def predictor(q):
            raw["n"] += 1
            return encoder.encode_raw(q)
        return _predicted_search(encoder, predictor, lambda: raw["n"], JPEG_REPACK_RATIO, target, lo, hi, start,
                                 aim=search.AIM, close_enough=search.CLOSE_ENOUGH, early_exit=False,
                                 max_real=search.MAX_ENCODES)
    return search.fit(encoder.encode, target, lo, hi, start=start, refine=1 if encoder.fractional else 0)


def _predicted_search(encoder, predictor, predictor_encodes, ratio, target, lo, hi, start, *,
                      aim, close_enough, early_exit, max_real):
    predicted_sizes = {}

    def predicted(q):
        if q not in predicted_sizes:
            predicted_sizes[q] = len(predictor(q))
        return predicted_sizes[q]

    def predict(correction, low, high):
        """Highest q in [low, high] whose predicted size fits (aiming a little low)."""
        found = search.fit(lambda q: b"\0" * predicted(q), target * aim / (ratio * correction),
                           low, high, start=min(high, max(low, start)))
        return found.quality, (found.size_at_lo or 0) * ratio * correction

    q, predicted_at_lo = predict(1.0, lo, hi)
    if early_exit and q is None and predicted_at_lo > target * 1.15:
        # Clearly too big even at the floor: downscale without a real encode.
        return search.Fit(None, None, int(predicted_at_lo), 0, {}, proxy_encodes=predictor_encodes())
    q = lo if q is None else q
    sizes, best_q, best = {}, None, None
    ok_q = bad_q = None
    for _ in range(max_real):
        data = encoder.encode(q)
        sizes[q] = len(data)
        if len(data) <= target:
            if best_q is None or q > best_q:
                best_q, best = q, data
            ok_q = q if ok_q is None else max(ok_q, q)
            if len(data) >= close_enough * target or q == hi:
                break
        else:
            bad_q = q if bad_q is None else min(bad_q, q)
            if q == lo:
                break
        low = lo if ok_q is None else ok_q + 1
        high = hi if bad_q is None else bad_q - 1
        if low > high:
            break
        correction = len(data) / (predicted(q) * ratio)
        nq, _ = predict(correction, low, high)
        nq = low if nq is None else nq
        if nq in sizes:
            break
        q = nq
    if best is None and lo not in sizes:
        data = encoder.encode(lo)  # the last resort before downscaling
        sizes[lo] = len(data)
        if len(data) <= target:
            best_q, best = lo, data
    size_at_lo = None if best is not None else min(sizes.values())
    return search.Fit(best_q, best, size_at_lo, len(sizes), sizes, proxy_encodes=predictor_encodes())


def _fit_target(image, icc, fmt, target):
    """Highest quality that fits, downscaling when even the floor does not. -> (data, image, settings, encodes)"""
    scaled = image
    encodes = 0
    lossless_bpp = None   # bytes per pixel of the last lossless attempt
    for _ in range(MAX_SCALES):
        at_min = min(scaled.size) <= MIN_SIDE
        smallest = None
        encoders = _encoders(fmt, scaled, icc, smallest=at_min, job_pixels=image.width * image.height)
        pixels = scaled.width * scaled.height
        hopeless = lossless_bpp is not None and lossless_bpp * pixels > LOSSLESS_HOPELESS * target
        if (fmt == "png" or (fmt == "webp" and _is_graphic(scaled))) and not hopeless:
            # Lossless first: for graphics it is often smaller than lossy at the
            # top qualities, and when it fits nothing can look better.
            data = encoders[0].lossless()
            encodes += 1
            if len(data) <= target:
                return data, scaled, _lossless_settings(fmt), encodes
            lossless_bpp = len(data) / pixels
        for encoder in encoders:
            lo = encoder.qmin if at_min else _floor(encoder)
            if fmt == "png":
                rungs = [q for q in PNG_LADDER if q >= lo] or [lo]
                if at_min:
                    rungs.append(0)
                if scaled is image:
                    found = search.ladder(encoder.encode, target, rungs)
                else:
                    # Sized so that about the floor fits: climb from the bottom.
                    found = search.ladder_up(encoder.encode, target, rungs)
            else:
                # After a downscale sized for the floor, the answer is just above it.
                hint = None if scaled is image else min(encoder.qmax, lo + DOWNSCALED_START_ABOVE_FLOOR)
                found = _search(encoder, target, lo, encoder.qmax, start=hint)
            encodes += found.encodes
            if found.quality is not None:
                if fmt == "png":
                    found.data = encoder.finish(found.data)
                settings = encoder.settings(found.quality)
                if getattr(found, "proxy_encodes", 0):
                    settings["proxy_encodes"] = found.proxy_encodes
                return found.data, scaled, settings, encodes
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


def _is_graphic(image):
    """Few colours (screenshots, logos, icons), where lossless codecs shine."""
    return image.width * image.height <= GRAPHIC_MAX_PIXELS and image.getcolors(GRAPHIC_MAX_COLOURS) is not None


def _lossless_settings(fmt):
    if fmt == "png":
        return {"codec": "png-lossless" + ("+oxipng" if codecs.oxipng else ""), "lossless": True}
    return {"codec": "libwebp", "lossless": True}


def _stripped_input(data, fmt, frames, orientation):
    """The upload itself minus its metadata, when that is lossless and shows the
    same picture: the last resort of auto mode for tiny or already-optimal files."""
    if frames != 1 or orientation not in (None, 1):
        return None
    if fmt == "png":
        return codecs.strip_png(data)
    if fmt == "jpeg":
        return codecs.strip_jpeg(data)
    return None


def _auto(image, icc, fmt, input_format, input_bytes, fallback=None):
    """-> (data, settings, encodes, score)"""
    scorer = Scorer(image)
    encodes = 0
    if fmt == "png":
        encoder = codecs.PngEncoder(image, icc)
        best = encoder.lossless()
        settings, score = _lossless_settings("png"), 100.0
        palette = encoder.finish(encoder.encode(90))
        palette_score = scorer.score(auto.decode(palette))
        if palette_score >= auto.AUTO_MIN_SCORE and len(palette) < len(best):
            best, settings, score = palette, encoder.settings(90), palette_score
        encodes = encoder.encodes
    else:
        encoder = _encoders(fmt, image, icc)[0]
        boxes = tiles(image.width, image.height, budget=SEARCH_PROXY_PIXELS) \
            if image.width * image.height > _proxy_min_pixels(fmt) else None
        # Big images: search on the proxy mosaic, then encode full size once.
        trial_encoder = encoder if boxes is None else encoder.clone(mosaic(image, boxes))
        trial_scorer = scorer if boxes is None else Scorer(trial_encoder.image)

        def trial(q):
            data = trial_encoder.encode(q)
            return data, trial_scorer.score(auto.decode(data))

        found = auto.lowest_passing(trial, encoder.qmin, encoder.qmax, auto.AUTO_MIN_SCORE, auto.START[fmt])
        q = encoder.qmax if found is None else found[0]
        if boxes is None and found is not None:
            best, score = found[1], found[2]
        else:
            best = encoder.encode(q)
            score = scorer.score(auto.decode(best))
            if score < auto.AUTO_MIN_SCORE - 1 and q < encoder.qmax:
                # The proxy was optimistic: one corrective step up.
                q = min(encoder.qmax, q + max(2, int((auto.AUTO_MIN_SCORE - score) / auto.SCORE_SLOPE + 1)))
                best = encoder.encode(q)
                score = scorer.score(auto.decode(best))
        settings = encoder.settings(q)
        if boxes is not None:
            settings["proxy_encodes"] = trial_encoder.encodes
        if fmt == "webp" and _is_graphic(image):
            lossless = encoder.lossless()
            if len(lossless) <= len(best):
                best, settings, score = lossless, _lossless_settings(fmt), 100.0
        encodes = encoder.encodes
    if fmt == input_format and len(best) >= input_bytes:
        # Never larger than the input: the best quality that is smaller.
        for encoder in _encoders(fmt, image, icc, smallest=True):
            found = _search(encoder, input_bytes - 1, encoder.qmin, encoder.qmax)
            encodes += found.encodes
            if found.quality is not None:
                best, settings = found.data, dict(encoder.settings(found.quality), capped_by_input=True)
                score = scorer.score(auto.decode(best))
                break
        else:
            if fallback is None or len(fallback) > input_bytes:
                raise TargetUnreachableError("No encoding of this image is smaller than the input.")
            best, score, settings = fallback, 100.0, {"codec": "input-without-metadata", "lossless": True}
    settings["mode"] = "auto"
    settings["min_score"] = auto.AUTO_MIN_SCORE
    return best, settings, encodes, score


def compress(data, *, output="original", target_size=None, max_pixels):
    """Compress one image; see the module docstring. Raises the errors of imgsmaller.errors."""
    started = time.perf_counter()
    decoded, facts = open_image(data, max_pixels=max_pixels)
    fmt = _output_format(output, facts.format)
    check_output_limits(facts, fmt)
    try:
        orientation = decoded.getexif().get(0x0112)
    except Exception:  # unreadable EXIF: normalise ignores it too
        orientation = None
    image, icc = normalise(decoded)
    if image is not decoded:
        decoded.close()
    del decoded
    if fmt == "jpeg":
        image = flatten(image)
    if target_size is None:
        fallback = _stripped_input(data, fmt, facts.frames, orientation) if fmt == facts.format else None
        out, settings, encodes, score = _auto(image, icc, fmt, facts.format, len(data), fallback)
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
        scoring = time.perf_counter()
        score = _score_result(image, out)
        settings["score_seconds"] = round(time.perf_counter() - scoring, 3)
    settings["seconds"] = round(time.perf_counter() - started, 3)
    return Result(
        data=out, format=fmt, width=width, height=height,
        original_format=facts.format, original_width=facts.width, original_height=facts.height,
        original_bytes=len(data), quality_score=None if score is None else round(float(score), 2),
        encodes=encodes, settings=settings)


def _score_result(image, out):
    """SSIMULACRA2 of the output (upscaled back if it was downscaled) against the original."""
    decoded = auto.decode(out)
    if decoded.size != image.size:
        return Scorer(image).score_upscaled(decoded)
    return Scorer(image).score(decoded)


__all__ = ["probe", "compress", "check_output_limits", "Probe", "Result", "SUPPORTED_INPUT", "SUPPORTED_OUTPUT"]
