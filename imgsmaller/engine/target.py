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

import numpy as np
from PIL import Image

from imgsmaller.errors import TargetUnreachableError

from . import search
from .formats import SEARCH_PROXY_PIXELS, encoders_for, is_graphic, lossless_settings, proxy_boxes
from .score import mosaic, tiles

# Quality floors: below these the codec's artefacts cost more than a smaller
# picture does, so the search downscales instead (docs/engine.md, "Quality
# floors", from python -m bench.floor). Keyed by encoder name prefix.
QUALITY_FLOOR = {"jpegli": 20, "libjpeg-turbo": 40, "libwebp": 20, "libavif/aom": 30,
                 "imagequant": 30, "pillow-quantize": 30}
# mozjpeg's lossless repack of a jpegli file: about this fraction of its size (the median at
# ~100 KB on the corpus's photos, 0.86-0.95; the first guess only: each repack measures it).
JPEG_REPACK_RATIO = 0.92
# _start's curve is 10-30 qualities low for jpegli on photos (100 KB: median q92 at 768x512, q55 at
# 1600x1200): its target searches start this much higher (fewer raw trials: 86 -> 81 and 41 -> 38).
JPEGLI_START_OFFSET = 10
# The real method's size over method 2's at these qualities (medians of Kodak 13-24, JPEG q95 uploads, each
# spread ~+-3 %, so lo predicted 15 % over is over: early_exit); when a search stops: fewer real encodes.
WEBP_RATIO_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95)
WEBP_PREDICTOR_RATIOS = {4: (0.929, 0.929, 0.936, 0.944, 0.949, 0.955, 0.963, 0.975, 0.986, 1.001, 1.015),
                         5: (0.901, 0.898, 0.905, 0.914, 0.917, 0.912, 0.927, 0.938, 0.946, 0.972, 0.995),
                         6: (0.851, 0.858, 0.863, 0.869, 0.876, 0.876, 0.894, 0.909, 0.93, 0.954, 0.984),
                         "graphic": (0.93,) * 11}   # not what the photos measured: one ratio, as before
WEBP_CLOSE_ENOUGH = 0.99
WEBP_MAX_REAL = 4
# A WebP fit is kept when the calibrated predictor puts the next half quality this far over (a half step
# is 1-8 % in size); once calibrated, predictions aim inside the [WEBP_CLOSE_ENOUGH, 1] window.
WEBP_NEXT_OVER, WEBP_REAIM = 1.04, 0.995
WEBP_PREDICT_ON_MOSAIC_PIXELS = 1_200_000   # above this, method 2 runs on a SEARCH_PROXY_PIXELS mosaic
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
# A photo's lossless PNG predicted (on a proxy) above this multiple of the target is not tried.
LOSSLESS_PREDICTED_HOPELESS = 2.0
# PNG pictures above this many pixels search on a proxy mosaic first, then at most
# PNG_MAX_REAL palette encodes at full size (a 12 MP palette encode takes seconds).
PNG_PROXY_MIN_PIXELS = 1_200_000
PNG_MAX_REAL = 2
PNG_AIM = BIG_AIM
# A palette of the proxy mosaic is smaller per pixel than the whole picture's (fewer distinct
# colours to dither between): 11 % on the 12 MP mosaic at q50, at every oxipng level.
PNG_PROXY_CORRECTION = 1.1
# A palette's size goes as the pixel count to the power 0.82 (the 12 MP mosaic at q50: 4.25 MB
# full size, 1.37 MB at half the side); the side's margin puts PNG_DOWNSCALE_RUNG at ~0.9 of the
# target (0.94 ** (2 * 0.82)), below the proxy search's PNG_AIM: (exponent, margin).
PNG_AREA_FIT = (0.82, 0.94)
# A big picture's downscale is sized for this palette quality to fit, not the floor's: each rung
# below it costs 3-4 SSIMULACRA2 points for ~7 % of bytes, 4 % more pixels gain less
# (12 MP mosaic at 1.5 MB: scale 0.52 at q30 scores 39.4, scale 0.50 at q50 44.8).
PNG_DOWNSCALE_RUNG = 50
PNG_HOPELESS_AT_RUNG = 1.4
# Palette PNG qualities tried, best first (search.ladder).
PNG_LADDER = (100, 98, 96, 93, 90, 85, 80, 70, 60, 50, 40, 30)
# The smallest picture the target search will downscale to (shorter side).
MIN_SIDE = 16
MAX_SCALES = 8


@dataclass(frozen=True)
class Predictor:
    """A cheap stand-in for encoder.encode: its size times `ratio` (times `shape(q)`) predicts the real size."""
    encode: Callable[[float], bytes]
    encodes: Callable[[], int]     # how many predictor encodes so far
    ratio: float
    shape: Callable[[float], float] | None = None


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
    next_over: float | None = None  # a fit is kept when the next quality is predicted this far over the target
    reaim: float | None = None     # the aim once a real encode has calibrated the predictor (else aim)


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
    Each real encode re-calibrates the prediction (real / predicted) and the next
    quality comes from the predictor again, so most searches need one to three
    real encodes. jpegli + mozjpeg: the search runs on jpegli's raw files and
    repacks (mozjpeg's pass costs 3-7x the encode) only where they point
    (search.fit_repacked). Otherwise: search.fit.
    """
    image = encoder.image
    hinted = start is not None
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
        first = start if hinted else min(encoder.qmax - 5, start + JPEGLI_START_OFFSET)
        return search.fit_repacked(encoder.encode_raw, encoder.pack, target, lo, hi, start=first,
                                   ratio=JPEG_REPACK_RATIO, curve=encoder.size_curve)
    if hasattr(encoder, "predictor"):
        return _webp_fit(encoder, query)
    return search.fit(encoder.encode, target, lo, hi, start=start, refine=1 if encoder.fractional else 0)


def _webp_fit(encoder, query):
    """best_fit for libwebp: method 2 predicts the size (on a mosaic for mid-size images), on a grid of
    half qualities (0.5 steps are ~1 % in size), so that most searches need two or three real encodes."""
    image, pixels = encoder.image, encoder.image.width * encoder.image.height
    on_mosaic = pixels > WEBP_PREDICT_ON_MOSAIC_PIXELS
    predictor = encoder.predictor(mosaic(image, tiles(*image.size, budget=SEARCH_PROXY_PIXELS)) if on_mosaic else None)
    ratios = WEBP_PREDICTOR_RATIOS["graphic" if is_graphic(image) else min(max(encoder.method, 4), 6)]
    cheap = Predictor(_Halves(predictor.encode).encode, lambda: predictor.encodes,
                      pixels / (predictor.image.width * predictor.image.height),
                      shape=lambda k: float(np.interp(k / 2, WEBP_RATIO_QUALITIES, ratios)))
    halves = Query(query.target, query.lo * 2, query.hi * 2, query.start * 2)
    stop = Stopping(search.AIM, WEBP_CLOSE_ENOUGH, WEBP_MAX_REAL, True, next_over=WEBP_NEXT_OVER, reaim=WEBP_REAIM)
    found = _predicted_search(_Halves(encoder.encode), cheap, halves, stop)
    found.quality = None if found.quality is None else found.quality / 2
    found.sizes = {k / 2: size for k, size in found.sizes.items()}
    return found


@dataclass(frozen=True)
class _Halves:
    """An encode function seen on integer steps of half a quality."""
    wrapped: Callable[[float], bytes]

    def encode(self, k):
        return self.wrapped(k / 2)


def _predicted_search(encoder, predictor, query, stop):
    """best_fit with a predictor: real encodes only where the calibrated prediction points."""
    target, lo, hi, ratio = query.target, query.lo, query.hi, predictor.ratio
    predicted_sizes = {}

    def predicted(q):
        if q not in predicted_sizes:
            predicted_sizes[q] = round(len(predictor.encode(q)) * (predictor.shape(q) if predictor.shape else 1.0))
        return predicted_sizes[q]

    def predict(correction, low, high, start=query.start, aim=stop.aim):
        """Highest q in [low, high] whose predicted size fits (aiming a little low)."""
        found = search.fit(lambda q: b"\0" * predicted(q), target * aim / (ratio * correction),
                           low, high, start=min(high, max(low, start)))
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
        nq, _ = predict(correction, low, high, q, stop.reaim or stop.aim)   # from the last real encode: fewer
        if nq is None and ok_q is not None and predicted(low) * ratio * correction > (stop.next_over or 1e9) * target:
            break   # the next quality up would not fit either: no real encode to show it
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
            predicted = _predicted_lossless(candidates[0])
            if predicted is not None and predicted > LOSSLESS_PREDICTED_HOPELESS * target:
                lossless_bpp = predicted / pixels     # a photo: far too big, not tried at full size
            else:
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
        big_png = fmt == "png" and pixels > PNG_PROXY_MIN_PIXELS
        scaled = _downscale(image, scaled, target, smallest, *(PNG_AREA_FIT if big_png else (1.0, 0.92)))
    raise TargetUnreachableError(
        f"The target size of {target} bytes cannot be reached for this image, "
        f"even at {scaled.width}x{scaled.height} pixels.")


def _proxy(encoder):
    """A clone of the encoder on a mosaic of its picture when that is big (PNG_PROXY_MIN_PIXELS), and the
    pixel ratio; else None."""
    image = encoder.image
    if image.width * image.height <= PNG_PROXY_MIN_PIXELS or is_graphic(image):
        return None   # graphics: a mosaic of a screenshot predicts its palette and lossless sizes badly
    proxy = encoder.clone(mosaic(image, tiles(image.width, image.height, budget=SEARCH_PROXY_PIXELS)))
    return proxy, image.width * image.height / (proxy.image.width * proxy.image.height)


def _predicted_lossless(encoder):
    """The lossless size of a big picture as its proxy predicts it (None: small, encode it)."""
    found = _proxy(encoder)
    return None if found is None else len(found[0].lossless()) * found[1]


def _fit_at_this_size(encoder, target, at_min, downscaled):
    """One encoder's best fit for its picture: the palette ladder for PNG, else best_fit."""
    lo = encoder.qmin if at_min else floor(encoder)
    if encoder.format == "png":
        rungs = [q for q in PNG_LADDER if q >= lo] or [lo]
        if at_min:
            rungs.append(0)
        climb = search.ladder_up if downscaled else search.ladder   # after a downscale sized for the floor: up
        proxy, before = _proxy(encoder), encoder.encodes
        found = _png_predicted(encoder, proxy, target, rungs, downscaled) if proxy \
            else climb(encoder.encode, target, rungs)
        found.encodes = encoder.encodes - before   # the real ones: a saturated rung is no encode (PngEncoder.encode)
        if found.quality is not None:
            found.data = encoder.finish(found.data)
        return found
    # After a downscale sized for the floor, the answer is just above it.
    hint = min(encoder.qmax, lo + DOWNSCALED_START_ABOVE_FLOOR) if downscaled else None
    return best_fit(encoder, target, lo, encoder.qmax, start=hint)


def _png_predicted(encoder, proxy, target, rungs, downscaled):
    """The palette ladder of a big picture run on its proxy; then real encodes from the rung it found
    down (PNG_MAX_REAL). When even the lowest rung is predicted too big, no real encode: the next
    downscale is sized from the prediction."""
    proxy, ratio = proxy
    ratio *= PNG_PROXY_CORRECTION
    at = PNG_DOWNSCALE_RUNG if PNG_DOWNSCALE_RUNG in rungs else min(rungs)
    # Sized for that rung after a downscale, the answer is near it; from the full picture the ladder
    # climbs down from the top, unless that rung is far over (the lower rungs save ~7 % each).
    first = None if downscaled else len(proxy.encode(at)) * ratio
    if first is not None and first > target * PNG_HOPELESS_AT_RUNG:
        found = None
    else:
        found = (search.ladder_from(proxy.encode, target * PNG_AIM / ratio, rungs, at) if downscaled
                 else search.ladder(proxy.encode, target * PNG_AIM / ratio, rungs))
    if found is None or found.quality is None:
        # The next picture is sized for PNG_DOWNSCALE_RUNG, not for the floor.
        size = first if first is not None else found.sizes.get(at, found.size_at_lo) * ratio
        return search.Fit(None, None, int(size), 0, {}, proxy_encodes=proxy.encodes)
    sizes = {}
    for q in sorted((r for r in rungs if r <= found.quality), reverse=True)[:PNG_MAX_REAL]:
        data = encoder.encode(q)
        sizes[q] = len(data)
        if len(data) <= target:
            return search.Fit(q, data, None, len(sizes), sizes, proxy_encodes=proxy.encodes)
    return search.Fit(None, None, min(sizes.values()), len(sizes), sizes, proxy_encodes=proxy.encodes)


def _downscale(image, scaled, target, smallest, exponent, margin):
    """The original resized for the next try, from the smallest size the last one reached."""
    # Size is about proportional to the pixel count (to its `exponent`): shrink the
    # area by (target/smallest) ** (1 / exponent), with a margin since header bytes do not shrink.
    factor = math.sqrt((target / smallest) ** (1 / exponent)) * margin
    factor = min(factor, 0.9) * min(scaled.width / image.width, 1.0)
    factor = max(factor, MIN_SIDE / min(image.size))
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
