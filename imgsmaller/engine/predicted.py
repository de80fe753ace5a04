"""Searches with a cheap size predictor: real encodes only where the calibrated prediction points.

No Flask, no SQL; only search, formats and score. target.py decides which predictor a job gets
(a proxy mosaic for big images, libwebp's method 2 here); each real encode re-calibrates it
(real / predicted), so most searches need one to three real encodes. docs/engine.md has the
measurements behind the constants.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import search
from .formats import SEARCH_PROXY_PIXELS, is_graphic
from .score import mosaic, tiles

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
# The mosaic's prediction of the floor's size was 0.88-1.09x the real one on six 1600x1200 photos (so the 1.15 of
# early_exit); method 2 on the whole picture 0.996-1.011x (q20, q25): a floor it puts this far over is not encoded.
WEBP_FLOOR_OVER = 1.03
# Method 2 on the whole picture (up to 1.2 MP) put the floor at 0.98-1.04x the real size (24 Kodak photos, q20/q30).
WEBP_FLOOR_OVER_DIRECT = 1.05


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
    early_over: float = 1.15       # early_exit: lo predicted this far over the target
    # A better prediction of lo's size (q -> bytes), asked when the cheap one puts lo over the target but less than
    # early_over; over floor_over, early exit too.
    floor_size: Callable[[float], float] | None = None
    floor_over: float = 1.03
    calibrate: bool = False        # floor_size also calibrates the predictor before the first real encode


def webp_fit(encoder, query):
    """The byte-target search for libwebp: method 2 predicts the size (on a mosaic for mid-size images), on a grid of
    half qualities (0.5 steps are ~1 % in size), so that most searches need two or three real encodes."""
    image, pixels = encoder.image, encoder.image.width * encoder.image.height
    on_mosaic = pixels > WEBP_PREDICT_ON_MOSAIC_PIXELS
    predictor = encoder.predictor(mosaic(image, tiles(*image.size, budget=SEARCH_PROXY_PIXELS)) if on_mosaic else None)
    graphic = is_graphic(image)
    ratios = WEBP_PREDICTOR_RATIOS["graphic" if graphic else min(max(encoder.method, 4), 6)]
    shape = lambda k: float(np.interp(k / 2, WEBP_RATIO_QUALITIES, ratios))  # noqa: E731
    full = encoder.predictor() if on_mosaic and not graphic else None   # method 2 on the whole picture (the floor)
    cheap = Predictor(_Halves(predictor.encode).encode, lambda: predictor.encodes + (full.encodes if full else 0),
                      pixels / (predictor.image.width * predictor.image.height), shape=shape)
    halves = Query(query.target, query.lo * 2, query.hi * 2, query.start * 2)
    stop = Stopping(search.AIM, WEBP_CLOSE_ENOUGH, WEBP_MAX_REAL, True, next_over=WEBP_NEXT_OVER, reaim=WEBP_REAIM,
                    floor_size=(lambda k: len(full.encode(k / 2)) * shape(k)) if full else None,
                    floor_over=WEBP_FLOOR_OVER, calibrate=True,
                    early_over=1.15 if on_mosaic or graphic else WEBP_FLOOR_OVER_DIRECT)
    found = predicted_search(_Halves(encoder.encode), cheap, halves, stop)
    found.quality = None if found.quality is None else found.quality / 2
    found.sizes = {k / 2: size for k, size in found.sizes.items()}
    return found


def repacked_fit(encoder, proxy, pixel_ratio, query, *, ratio, early_over, floor_over):
    """search.fit_repacked for a big picture (jpegli + mozjpeg): the start and the repack ratio from its proxy
    mosaic's raw files (pixel_ratio: the picture's pixels over the proxy's), so that the full-size work is two
    or three raw files (0.1 s each at 12 MP) and one repack (0.38 s). `ratio`: the first guess on the proxy;
    the floor predicted `early_over` over the target: no full-size encode at all (downscale); its full-size raw
    file times the proxy's ratio `floor_over` over: no repack."""
    target, lo, hi = query.target, query.lo, query.hi
    raw = {}

    def proxy_raw(q):
        if q not in raw:
            raw[q] = proxy.encode_raw(q)
        return raw[q]

    q = search.highest_within(lambda k: len(proxy_raw(k)) * pixel_ratio * ratio, target, lo, hi, query.start, {},
                              encoder.size_curve)
    at = lo if q is None else q
    ratios = {}

    def measured(k):
        if k not in ratios:
            ratios[k] = encoder.repack_ratio(proxy_raw(k))
        return ratios[k]

    if q is None and len(proxy_raw(lo)) * pixel_ratio * measured(lo) > early_over * target:
        return search.Fit(None, None, int(len(proxy_raw(lo)) * pixel_ratio * measured(lo)), 0, {},
                          proxy_encodes=len(raw) + len(ratios))
    found = search.fit_repacked(encoder.encode_raw, encoder.pack, target, lo, hi, start=at, ratio=measured(at),
                                curve=_proxy_curve(encoder.size_curve, {k: len(v) for k, v in raw.items()}),
                                floor_ratio=measured, hopeless=floor_over)
    cheap = len(raw) + len(ratios)
    found.proxy_encodes += cheap
    return found


def _proxy_curve(curve, sizes):
    """`curve` (a typical log size by quality) bent through the proxy's measured sizes (q -> bytes): the
    picture's own shape where the proxy measured it, the typical one's slopes beyond."""
    qualities = sorted(sizes)
    residuals = [math.log(sizes[q]) - curve(q) for q in qualities]
    return lambda q: curve(q) + float(np.interp(q, qualities, residuals))


@dataclass(frozen=True)
class _Halves:
    """An encode function seen on integer steps of half a quality."""
    wrapped: Callable[[float], bytes]

    def encode(self, k):
        return self.wrapped(k / 2)


def predicted_search(encoder, predictor, query, stop):
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
    exit_over = stop.early_over
    if stop.early_exit and q is None and target < predicted_at_lo <= target * stop.early_over and stop.floor_size:
        predicted_at_lo, exit_over = stop.floor_size(lo), stop.floor_over
    if stop.early_exit and q is None and predicted_at_lo > target * exit_over:
        # Clearly too big even at the floor: downscale without a real encode.
        return search.Fit(None, None, int(predicted_at_lo), 0, {}, proxy_encodes=predictor.encodes())
    q = lo if q is None else q
    if stop.calibrate and stop.floor_size:
        first = stop.floor_size(q) / (predicted(q) * ratio)
        q = predict(first, lo, hi, q, stop.reaim or stop.aim)[0]
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
