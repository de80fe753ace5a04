"""The byte-target search: the highest quality that fits, else a smaller picture.

No Flask, no SQL; not auto, not pipeline.

search.py finds a quality on a plain encode function; this module decides what
to search with: the quality floors below which a downscale looks better, cheap
size predictors (the raw jpegli file; a proxy mosaic for big images) that are
re-calibrated by each real encode, and the downscale loop. The measurements
behind the constants are in docs/engine.md.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from imgsmaller.errors import TargetUnreachableError

from . import search
from .formats import encoders_for, is_graphic, lossless_settings, proxy_boxes
from .score import mosaic

# Quality floors: below these the codec's artefacts cost more than a smaller
# picture does, so the search downscales instead (docs/engine.md, "Quality
# floors", from python -m bench.floor). Keyed by encoder name prefix.
QUALITY_FLOOR = {"jpegli": 20, "libjpeg-turbo": 40, "libwebp": 20, "libavif/aom": 30,
                 "imagequant": 30, "pillow-quantize": 30}
# mozjpeg's lossless repack of a jpegli file: about this fraction of its size
# (the first guess only; each real encode measures it).
JPEG_REPACK_RATIO = 0.88
BIG_AIM = 0.96
BIG_CLOSE_ENOUGH = 0.94
# Full-size encodes allowed per big-image search: AVIF costs ~1.5 s per 12 MP
# encode even at speed 9 (docs/engine.md), so it gets fewer.
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
MAX_SCALES = 8


@dataclass(frozen=True)
class Predictor:
    """A cheap stand-in for encoder.encode: its size times `ratio` predicts the real size."""
    encode: Callable[[float], bytes]
    encodes: Callable[[], int]     # how many predictor encodes so far
    ratio: float


@dataclass(frozen=True)
class Query:
    """What to find: the highest quality in [lo, hi] whose encode fits `target` bytes."""
    target: int
    lo: float
    hi: float
    start: float                   # the first quality to predict from


@dataclass(frozen=True)
class Stopping:
    """When a predicted search stops."""
    aim: float                     # predict for target * aim: sizes are noisy
    close_enough: float            # a fitting encode this close to the target is kept
    max_real: int                  # real encodes allowed
    early_exit: bool               # give up without a real encode when even lo is predicted far too big


def floor(encoder):
    """The lowest quality worth keeping the full picture for (QUALITY_FLOOR)."""
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
    return int(min(encoder.qmax - 5, max(floor(encoder), q)))


def best_fit(encoder, target, lo, hi, start=None):
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
    query = Query(target, lo, hi, start)
    boxes = proxy_boxes(image, encoder.format)
    if boxes is not None:
        proxy = encoder.clone(mosaic(image, boxes))
        ratio = image.width * image.height / (proxy.image.width * proxy.image.height)
        stop = Stopping(aim=BIG_AIM, close_enough=BIG_CLOSE_ENOUGH, early_exit=True,
                        max_real=BIG_MAX_ENCODES.get(encoder.format, BIG_MAX_ENCODES_DEFAULT))
        return _predicted_search(encoder, Predictor(proxy.encode, lambda: proxy.encodes, ratio), query, stop)
    if getattr(encoder, "can_predict", False):
        raw = {"n": 0}

        def predictor(q):
            raw["n"] += 1
            return encoder.encode_raw(q)
        stop = Stopping(aim=search.AIM, close_enough=search.CLOSE_ENOUGH, early_exit=False,
                        max_real=search.MAX_ENCODES)
        return _predicted_search(encoder, Predictor(predictor, lambda: raw["n"], JPEG_REPACK_RATIO), query, stop)
    return search.fit(encoder.encode, target, lo, hi, start=start, refine=1 if encoder.fractional else 0)


def _predicted_search(encoder, predictor, query, stop):
    """best_fit with a predictor: real encodes only where the calibrated prediction points."""
    target, lo, hi, ratio = query.target, query.lo, query.hi, predictor.ratio
    predicted_sizes = {}

    def predicted(q):
        if q not in predicted_sizes:
            predicted_sizes[q] = len(predictor.encode(q))
        return predicted_sizes[q]

    def predict(correction, low, high):
        """Highest q in [low, high] whose predicted size fits (aiming a little low)."""
        found = search.fit(lambda q: b"\0" * predicted(q), target * stop.aim / (ratio * correction),
                           low, high, start=min(high, max(low, query.start)))
        return found.quality, (found.size_at_lo or 0) * ratio * correction

    q, predicted_at_lo = predict(1.0, lo, hi)
    if stop.early_exit and q is None and predicted_at_lo > target * 1.15:
        # Clearly too big even at the floor: downscale without a real encode.
        return search.Fit(None, None, int(predicted_at_lo), 0, {}, proxy_encodes=predictor.encodes())
    q = lo if q is None else q
    sizes, best_q, best = {}, None, None
    ok_q = bad_q = None
    for _ in range(stop.max_real):
        data = encoder.encode(q)
        sizes[q] = len(data)
        if len(data) <= target:
            if best_q is None or q > best_q:
                best_q, best = q, data
            ok_q = q if ok_q is None else max(ok_q, q)
            if len(data) >= stop.close_enough * target or q == hi:
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
    return search.Fit(best_q, best, size_at_lo, len(sizes), sizes, proxy_encodes=predictor.encodes())


def fit_target(image, icc, fmt, target):
    """Highest quality that fits, downscaling when even the floor does not. -> (data, image, settings, encodes)"""
    scaled = image
    encodes = 0
    lossless_bpp = None   # bytes per pixel of the last lossless attempt
    for _ in range(MAX_SCALES):
        at_min = min(scaled.size) <= MIN_SIDE
        smallest = None
        candidates = encoders_for(fmt, scaled, icc, smallest=at_min, job_pixels=image.width * image.height)
        pixels = scaled.width * scaled.height
        hopeless = lossless_bpp is not None and lossless_bpp * pixels > LOSSLESS_HOPELESS * target
        if (fmt == "png" or (fmt == "webp" and is_graphic(scaled))) and not hopeless:
            # Lossless first: for graphics it is often smaller than lossy at the
            # top qualities, and when it fits nothing can look better.
            data = candidates[0].lossless()
            encodes += 1
            if len(data) <= target:
                return data, scaled, lossless_settings(fmt), encodes
            lossless_bpp = len(data) / pixels
        for encoder in candidates:
            found = _fit_at_this_size(encoder, target, at_min, downscaled=scaled is not image)
            encodes += found.encodes
            if found.quality is not None:
                settings = encoder.settings(found.quality)
                if found.proxy_encodes:
                    settings["proxy_encodes"] = found.proxy_encodes
                return found.data, scaled, settings, encodes
            smallest = found.size_at_lo if smallest is None else min(smallest, found.size_at_lo)
        if at_min:
            break
        scaled = _downscale(image, scaled, target, smallest)
    raise TargetUnreachableError(
        f"The target size of {target} bytes cannot be reached for this image, "
        f"even at {scaled.width}x{scaled.height} pixels.")


def _fit_at_this_size(encoder, target, at_min, downscaled):
    """One encoder's best fit for its picture: the palette ladder for PNG, else best_fit."""
    lo = encoder.qmin if at_min else floor(encoder)
    if encoder.format == "png":
        rungs = [q for q in PNG_LADDER if q >= lo] or [lo]
        if at_min:
            rungs.append(0)
        # After a downscale sized so that about the floor fits: climb from the bottom.
        climb = search.ladder_up if downscaled else search.ladder
        found = climb(encoder.encode, target, rungs)
        if found.quality is not None:
            found.data = encoder.finish(found.data)
        return found
    # After a downscale sized for the floor, the answer is just above it.
    hint = min(encoder.qmax, lo + DOWNSCALED_START_ABOVE_FLOOR) if downscaled else None
    return best_fit(encoder, target, lo, encoder.qmax, start=hint)


def _downscale(image, scaled, target, smallest):
    """The original resized for the next try, from the smallest size the last one reached."""
    # Size is about proportional to the pixel count: shrink the area by
    # target/smallest, with a margin since header bytes do not shrink.
    factor = math.sqrt(target / smallest) * 0.92
    factor = min(factor, 0.9) * min(scaled.width / image.width, 1.0)
    factor = max(factor, MIN_SIDE / min(image.size))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
