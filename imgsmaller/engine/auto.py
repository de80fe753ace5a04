"""Auto mode: per image, the smallest encode that stays visually lossless by SSIMULACRA2. No Flask, no SQL.

Rather than one fixed quality for every image, each trial encode is decoded and
scored against the original, and the search looks for the lowest quality whose
score is still >= AUTO_MIN_SCORE. When the output format equals the input
format the result must also be smaller than the input; if the visually
lossless encode is not, the byte-target search takes over with the input size
as the target.
"""

import io

from PIL import Image

# The visually-lossless bound. libjxl's scale for SSIMULACRA2: 80 = "very high
# quality: distortion not noticeable by an average observer in a side-by-side
# comparison at 1:1 from a normal viewing distance" (about cjxl -d 1.5, near
# Squoosh's Butteraugli 1.4 target); 70 = artefacts perceptible but not
# annoying; 90 = not noticeable in a flicker test. What it saves on JPEG q95
# uploads is in bench/RESULTS.md (python -m bench.threshold).
AUTO_MIN_SCORE = 80.0
MAX_TRIALS = 6
# Score gained per quality step in the mid range, for the first step only.
SCORE_SLOPE = 0.6
START = {"jpeg": 80, "webp": 80, "avif": 70}


def decode(data):
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB")


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
