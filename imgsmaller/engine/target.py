"""The byte-target search: the highest quality that fits, else a smaller picture.

No Flask, no SQL; not auto, not pipeline.

search.py finds a quality on a plain encode function, predicted.py with a cheap size
predictor re-calibrated by each real encode; this module decides what to search with:
the quality floors below which a downscale looks better, the predictors (the raw jpegli
file; a proxy mosaic for big images; libwebp's method 2), and the downscale loop. The measurements
behind the constants are in docs/engine.md.
"""

import math

from PIL import Image

from imgsmaller.errors import TargetUnreachableError

from . import search
from .formats import SEARCH_PROXY_PIXELS, encoders_for, is_graphic, lossless_settings, proxy_boxes
from .predicted import Predictor, Query, Stopping, predicted_search, repacked_fit, webp_fit
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
# A big JPEG whose floor's full-size raw file times the repack ratio measured on its proxy is this far over the target
# is downscaled without repacking it (the proxy's ratio at q20 was 0.95-1.00x the picture's on four 12 MP mosaics:
# low, so the prediction errs on the side of repacking).
JPEG_FLOOR_OVER = 1.03
BIG_AIM = 0.96
BIG_CLOSE_ENOUGH = 0.94
# A big picture predicted by its proxy this far over the target at the floor is downscaled without a full-size encode.
BIG_EARLY_OVER = 1.15
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
        if getattr(encoder, "can_predict", False):
            return repacked_fit(encoder, proxy, ratio, query, ratio=JPEG_REPACK_RATIO, early_over=BIG_EARLY_OVER,
                                floor_over=JPEG_FLOOR_OVER)
        stop = Stopping(aim=BIG_AIM, close_enough=BIG_CLOSE_ENOUGH, early_exit=True, early_over=BIG_EARLY_OVER,
                        max_real=BIG_MAX_ENCODES.get(encoder.format, BIG_MAX_ENCODES_DEFAULT))
        return predicted_search(encoder, Predictor(proxy.encode, lambda: proxy.encodes, ratio), query, stop)
    if getattr(encoder, "can_predict", False):
        first = start if hinted else min(encoder.qmax - 5, start + JPEGLI_START_OFFSET)
        return search.fit_repacked(encoder.encode_raw, encoder.pack, target, lo, hi, start=first,
                                   ratio=JPEG_REPACK_RATIO, curve=encoder.size_curve)
    if hasattr(encoder, "predictor"):
        return webp_fit(encoder, query)
    return search.fit(encoder.encode, target, lo, hi, start=start, refine=1 if encoder.fractional else 0)


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
            predicted = _predicted_lossless(candidates[0]) if fmt == "png" else None   # a WebP graphic: no proxy
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
