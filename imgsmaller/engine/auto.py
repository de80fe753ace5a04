"""Auto mode: the smallest encode that stays visually lossless by SSIMULACRA2. No Flask, no SQL; not pipeline.

Rather than one fixed quality for every image, each trial encode is decoded and
scored against the original, and the search looks for the lowest quality whose
score is still >= AUTO_MIN_SCORE. When the output format equals the input
format the result must also be smaller than the input; if the visually
lossless encode is not, the byte-target search takes over with the input size
as the target, and the upload minus its metadata is the last resort.

PNG from a lossy upload (a JPEG photo): a palette at quality 90 first, checked
on a proxy mosaic for big images, and lossless only when the palette does not
pass; lossless PNG of a photo is several times its JPEG. Another lossy format
than the upload's: when the visually lossless encode is larger than the upload,
the best encode at full size that is not (scoring less, which the pipeline warns of).
"""

import numpy as np

from imgsmaller.errors import TargetUnreachableError

from .allocator import trim_heap
from .formats import encoders_for, is_graphic, lossless_settings, proxy_boxes
from .quality import LazyScorer, score_file
from .score import Scorer, mosaic
from .target import best_fit

# The visually-lossless bound. libjxl's scale for SSIMULACRA2: 80 = "very high
# quality: distortion not noticeable by an average observer in a side-by-side
# comparison at 1:1 from a normal viewing distance" (about cjxl -d 1.5, near
# Squoosh's Butteraugli 1.4 target); 70 = artefacts perceptible but not
# annoying; 90 = not noticeable in a flicker test. What it saves on JPEG q95
# uploads is in docs/engine.md (python -m bench.threshold).
AUTO_MIN_SCORE = 80.0
MAX_TRIALS = 6
# Score gained per quality step in the mid range, for the first step only.
SCORE_SLOPE = 0.6
START = {"jpeg": 80, "webp": 86, "avif": 70}
# On a big picture's proxy mosaic WebP starts where it did before q86 (the 12 MP mosaic: from 86 the proxy's
# first pass ended the search and the result scored 79.88; from 80, q87 and 81.48).
START_ON_PROXY = {"webp": 80}
LOSSY_OUTPUTS = ("jpeg", "webp", "avif")
# The palette quality tried in auto (libimagequant's 0-100; 256 colours at most).
PALETTE_QUALITY = 90
# A big image's palette is first scored on the proxy mosaic: this far below the
# threshold, the full-size palette (seconds at 12 MP) is not tried.
PALETTE_PROXY_MARGIN = 3.0


def lowest_passing(trial, lo, hi, threshold, start, max_trials=MAX_TRIALS):
    """Lowest q in [lo, hi] with trial(q)[1] >= threshold; returns (q, data, score, trials)."""
    tried = {}
    pass_q = fail_q = None
    best = None
    q = start
    while True:
        data, score = trial(q)
        tried[q] = score
        if score >= threshold:
            if pass_q is None or q < pass_q:
                pass_q, best = q, (data, score)
        elif fail_q is None or q > fail_q:
            fail_q = q
        low = fail_q if fail_q is not None else lo - 1
        high = pass_q if pass_q is not None else hi + 1
        if high - low <= 1 or len(tried) >= max_trials:
            break
        if pass_q is not None and tried[pass_q] - threshold < 0.75:
            break
        if pass_q is None and len(tried) == max_trials - 1:
            q = hi  # last trial: make sure something passes
            if q in tried:
                break
            continue
        if pass_q is not None and fail_q is not None:
            sp, sf = tried[pass_q], tried[fail_q]
            guess = fail_q + (threshold + 0.3 - sf) * (pass_q - fail_q) / max(sp - sf, 1e-6)
        else:
            ref = pass_q if pass_q is not None else fail_q
            guess = ref + (threshold + 0.3 - tried[ref]) / SCORE_SLOPE
        nq = min(high - 1, max(low + 1, int(round(guess))))
        if nq in tried:
            nq = (low + high) // 2
            if nq in tried:
                break
        q = nq
    if best is None:
        return None
    return pass_q, best[0], best[1], len(tried)


def _restore(parking):
    if parking is not None:
        parking.restore()


class _Parking:
    """A big JPEG's last encodes with the picture's pixels dropped (parked: Image.close(), which frees them): jpegli
    takes them packed, the score its references, mozjpeg the file; each stacked on the picture (12 MP: 46 MiB, 4
    bytes a pixel), the score's decode on both. Its holders share the Image object; size and mode stay.
    `reopen()` decodes the same picture again from the upload, for what needs the pixels later (restore())."""

    def __init__(self, image, reopen):
        self.image, self.reopen, self.parked = image, reopen, False

    def park(self):
        self.image.close()
        self.parked = True
        trim_heap()

    def restore(self):
        if self.parked:
            self.image.im, self.parked = self.reopen().im, False


def encode_auto(image, icc, fmt, *, input_format, input_bytes, fallback=None, lossy_upload=False, reopen=None):
    """The smallest encode scoring >= AUTO_MIN_SCORE; never larger than the upload
    when the format is the same (`fallback`: the upload minus its metadata, or
    None, or a function that makes it when it is needed), nor in another lossy
    format unless `input_bytes` is None (a conversion the rule does not bind).
    `reopen`: a function that decodes the same picture again; with it, a big JPEG's
    picture is parked through its last encodes (_Parking) and may be returned so,
    its size and mode kept. -> (data, settings, encodes, score)"""
    scorer = LazyScorer(image)
    parking = _Parking(image, reopen) if reopen is not None else None
    if fmt == "png" and lossy_upload:
        best, settings, encodes, score = _auto_png_of_photo(image, icc, scorer)
    elif fmt == "png":
        best, settings, encodes, score = _auto_png(image, icc, scorer)
    else:
        best, settings, encodes, score = _auto_lossy(image, icc, fmt, scorer, parking)
    if fmt == input_format and len(best) >= input_bytes:
        _restore(parking)
        best, settings, more, score = _smaller_than_input(image, icc, fmt, input_bytes, fallback, scorer, parking)
        encodes += more
    elif fmt in LOSSY_OUTPUTS and input_bytes is not None and len(best) > input_bytes:
        # Another lossy format: the best encode as small as the upload, at full size
        # (auto never downscales); none at all (a tiny PNG as JPEG): the one found.
        _restore(parking)
        found, more = _best_under(image, icc, fmt, input_bytes, scorer, parking)
        encodes += more
        if found is not None:
            best, settings, score = found
    settings["mode"] = "auto"
    settings["min_score"] = AUTO_MIN_SCORE
    return best, settings, encodes, score


def _auto_png(image, icc, scorer):
    """Lossless, or a quality-90 palette when that passes and is smaller."""
    encoder = encoders_for("png", image, icc)[0]
    best = encoder.lossless()
    settings, score = lossless_settings("png"), 100.0
    palette = encoder.finish(encoder.encode(PALETTE_QUALITY))
    palette_score = score_file(scorer, palette)
    if palette_score >= AUTO_MIN_SCORE and len(palette) < len(best):
        best, settings, score = palette, encoder.settings(PALETTE_QUALITY), palette_score
    return best, settings, encoder.encodes, score


def palette_at_threshold(image, icc, scorer=None):
    """The quality-90 palette PNG if it scores >= AUTO_MIN_SCORE (`scorer`: the picture's LazyScorer, or None).
    -> ((data, settings, score) or None, encodes)"""
    encoder = encoders_for("png", image, icc)[0]
    boxes = proxy_boxes(image, "png")
    encodes = 0
    if boxes is not None:
        proxy = encoder.clone(mosaic(image, boxes))
        proxy_score = score_file(_mosaic_scorer(scorer, boxes, proxy.image), proxy.encode(PALETTE_QUALITY))
        encodes += 1
        if proxy_score < AUTO_MIN_SCORE - PALETTE_PROXY_MARGIN:
            return None, encodes
    if scorer is not None:
        scorer.release()
    palette = encoder.finish(encoder.encode(PALETTE_QUALITY))
    score = score_file(scorer or Scorer(image), palette)
    encodes += encoder.encodes
    if score < AUTO_MIN_SCORE:
        return None, encodes
    return (palette, encoder.settings(PALETTE_QUALITY), score), encodes


def _mosaic_scorer(scorer, boxes, proxy_image):
    """A Scorer of the proxy mosaic: the full picture's scorer on the same references when they are that
    mosaic's pixels (the same tiles), else a new one (two references: ~20 MiB each)."""
    if scorer is not None and scorer.boxes == boxes:
        return scorer.of_mosaic()
    return Scorer(proxy_image)


def _auto_png_of_photo(image, icc, scorer):
    """PNG from a lossy upload: the palette when it passes (lossless too for few-colour images), else lossless."""
    found, encodes = palette_at_threshold(image, icc, scorer)
    if found is not None and not is_graphic(image):
        return found[0], found[1], encodes, found[2]
    scorer.release()
    lossless = encoders_for("png", image, icc)[0].lossless()
    if found is not None and len(found[0]) < len(lossless):
        return found[0], found[1], encodes + 1, found[2]
    return lossless, lossless_settings("png"), encodes + 1, 100.0


def _auto_lossy(image, icc, fmt, scorer, parking=None):
    """The lowest passing quality of the format's best encoder (lossless WebP for graphics when smaller).

    Trials are scored as encoder.trial() makes them: jpegli's raw file (mozjpeg's
    lossless repack changes no pixel, so it runs once, on the result), WebP at a
    cheaper method (encoder.scout()), and for big images the proxy mosaic; unless
    the trials were the real encodes, the found quality is encoded for real and scored."""
    encoder = encoders_for(fmt, image, icc)[0]
    boxes = proxy_boxes(image, fmt)
    # Big images: search on the proxy mosaic, then encode full size once.
    trial_encoder = encoder.scout() if boxes is None else encoder.clone(mosaic(image, boxes))
    trial_scorer = scorer if boxes is None else _mosaic_scorer(scorer, boxes, trial_encoder.image)

    def trial(q):
        data = trial_encoder.trial(q)
        return data, score_file(trial_scorer, data)

    start = START[fmt] if boxes is None else START_ON_PROXY.get(fmt, START[fmt])
    found = lowest_passing(trial, encoder.qmin, encoder.qmax, AUTO_MIN_SCORE, start)
    proxy_encodes = trial_encoder.encodes
    if boxes is not None:   # the references, the mosaic and its packed pixels: not held through the full-size work
        trial_scorer = trial_encoder = None
        scorer.release()
    q = encoder.qmax if found is None else found[0]
    if trial_encoder is encoder and found is not None:
        best, score = found[1], found[2]
    else:
        if parking is not None and boxes is not None and getattr(encoder, "can_predict", False):
            rgb = encoder.keep_packed("RGB")
            parking.park()
            scorer.build_from(np.frombuffer(rgb, np.uint8).reshape(image.height, image.width, 3))
            del rgb
        best = encoder.trial(q)
        score = score_file(scorer, best)
        # The proxy or scout was optimistic: one corrective step up (on the proxy, only when far off).
        margin = 1 if boxes is not None else 0
        if score < AUTO_MIN_SCORE - margin and q < encoder.qmax:
            q = min(encoder.qmax, q + max(1 if boxes is None else 2, int((AUTO_MIN_SCORE - score) / SCORE_SLOPE + 1)))
            _restore(parking)
            best = encoder.trial(q)
            score = score_file(scorer, best)
        scorer.release()
    best = encoder.pack(best)
    settings = encoder.settings(q)
    if boxes is not None:
        settings["proxy_encodes"] = proxy_encodes
    elif trial_encoder is not encoder:
        settings["scout_encodes"] = trial_encoder.encodes
    if fmt == "webp" and is_graphic(image):   # (never parked: JPEG only)
        lossless = encoder.lossless()
        if len(lossless) <= len(best):
            best, settings, score = lossless, lossless_settings(fmt), 100.0
    return best, settings, encoder.encodes, score


def _best_under(image, icc, fmt, limit, scorer, parking=None):
    """The highest quality of at most `limit` bytes at full size. -> ((data, settings, score) or None, encodes)"""
    encodes = 0
    for encoder in encoders_for(fmt, image, icc, smallest=True):
        found = best_fit(encoder, limit, encoder.qmin, encoder.qmax)
        encodes += found.encodes
        if found.quality is not None:
            settings = dict(encoder.settings(found.quality), capped_by_input=True)
            if parking is not None and fmt == "jpeg" and proxy_boxes(image, fmt) is not None:
                scorer.refs   # noqa: B018 (built from the picture; then nothing needs its pixels: _Parking)
                parking.park()   # (mozjpeg's progressive file decodes through a whole-image coefficient buffer)
            return (found.data, settings, score_file(scorer, found.data)), encodes
    return None, encodes


def _smaller_than_input(image, icc, fmt, input_bytes, fallback, scorer, parking=None):
    """The best quality smaller than the upload, else the upload minus its metadata.
    -> (data, settings, encodes, score)"""
    found, encodes = _best_under(image, icc, fmt, input_bytes - 1, scorer, parking)
    if found is not None:
        return found[0], found[1], encodes, found[2]
    if callable(fallback):
        fallback = fallback()
    if fallback is None or len(fallback) > input_bytes:
        raise TargetUnreachableError("No encoding of this image is smaller than the input.")
    return fallback, {"codec": "input-without-metadata", "lossless": True}, encodes, 100.0
