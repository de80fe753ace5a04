"""Find the highest quality whose encode fits a byte target, in few encodes.

Pure functions: no I/O, no other engine module.

File size grows roughly exponentially with the quality knob over the range
that matters, so the search interpolates on log(size): a first step from an
assumed slope, then secant steps inside the bracket [largest q that fits,
smallest q that does not], with a bisection step whenever the secant fails to
shrink the bracket well. It never returns an encode over the target.
"""

import math
from dataclasses import dataclass

# d ln(size) / d quality, for the first step before a second point is known;
# about right for JPEG/WebP/AVIF in the 30-90 range.
DEFAULT_SLOPE = 0.035
# Land a little under the target so a step rarely overshoots (sizes are noisy).
AIM = 0.985
# A fitting encode this close to the target is taken as found.
CLOSE_ENOUGH = 0.99
MAX_ENCODES = 8


@dataclass
class Fit:
    quality: int | None      # highest fitting quality found; None if even lo does not fit
    data: bytes | None       # its encode
    size_at_lo: int | None   # size at the lowest quality tried, when nothing fitted
    encodes: int
    sizes: dict              # quality -> bytes, every trial
    proxy_encodes: int = 0   # trials on a proxy image before these (big images)

    def slope_near(self, q, default=DEFAULT_SLOPE):
        """d ln(size)/dq from the two trials nearest to q."""
        near = sorted(self.sizes, key=lambda k: abs(k - q))[:2]
        if len(near) < 2 or near[0] == near[1]:
            return default
        a, b = sorted(near)
        return max((math.log(self.sizes[b]) - math.log(self.sizes[a])) / (b - a), default / 4)


def fit(encode, target, lo, hi, *, start=None, max_encodes=MAX_ENCODES, slope=DEFAULT_SLOPE,
        aim=AIM, close_enough=CLOSE_ENOUGH, refine=0):
    """Highest integer q in [lo, hi] with len(encode(q)) <= target.

    With `refine` > 0 (codecs that take fractional qualities: libwebp), up to
    that many extra encodes bisect between the best q and q + 1 when the
    integer answer leaves more than 1 - close_enough of the target unused."""
    sizes = {}
    best_q, best = None, None
    ok_q, bad_q = None, None      # bracket: ok_q fits, bad_q does not
    q = int(round(start if start is not None else (lo + hi) * 0.75))
    q = min(hi, max(lo, q))
    bisect_next = False
    while True:
        data = encode(q)
        size = len(data)
        sizes[q] = size
        if size <= target:
            if best_q is None or q > best_q:
                best_q, best = q, data
            ok_q = q if ok_q is None else max(ok_q, q)
        else:
            bad_q = q if bad_q is None else min(bad_q, q)
        data = None
        if best_q == hi or (bad_q == lo) or len(sizes) >= max_encodes:
            break
        if ok_q is not None and sizes[ok_q] >= close_enough * target:
            break
        low = ok_q if ok_q is not None else lo - 1     # exclusive bounds of the unknown
        high = bad_q if bad_q is not None else hi + 1
        if high - low <= 1:
            break
        # Reserve the last encode for lo when nothing has fitted yet.
        if ok_q is None and len(sizes) == max_encodes - 1:
            q = lo
            continue
        if ok_q is not None and bad_q is not None:
            if bisect_next:
                guess = (low + high) / 2
            else:
                s0, s1 = math.log(sizes[ok_q]), math.log(sizes[bad_q])
                guess = ok_q + (math.log(target * aim) - s0) * (bad_q - ok_q) / max(s1 - s0, 1e-9)
        else:
            # One side known: extrapolate from the nearest point(s).
            known = sorted(sizes)
            if len(known) >= 2:
                qa, qb = known[0], known[-1]
                local = (math.log(sizes[qb]) - math.log(sizes[qa])) / max(qb - qa, 1)
                local = max(local, slope / 4)
            else:
                local = slope
            ref = ok_q if ok_q is not None else bad_q
            guess = ref + (math.log(target * aim) - math.log(sizes[ref])) / local
        nq = int(round(guess))
        nq = min(high - 1, max(low + 1, nq))
        if nq in sizes:
            nq = int((low + high) // 2)
            if nq in sizes:
                break
        # If this step shrinks the bracket by less than half, bisect next time.
        width = high - low
        bisect_next = ok_q is not None and bad_q is not None and min(nq - low, high - nq) < width / 4
        q = nq
    if refine and best_q is not None and sizes.get(best_q + 1, 0) > target \
            and sizes[best_q] < close_enough * target:
        low, high = best_q, best_q + 1
        for _ in range(refine):
            q = (low + high) / 2
            data = encode(q)
            sizes[q] = len(data)
            if len(data) <= target:
                best_q, best, low = q, data, q
            else:
                high = q
    size_at_lo = None if best_q is not None else min(sizes.values())
    return Fit(best_q, best, size_at_lo, len(sizes), sizes)


def ladder(encode, target, qualities, *, max_encodes=MAX_ENCODES):
    """The highest of `qualities` (tried high to low) whose encode fits, for codecs
    whose size is not monotonic in quality (palette PNG: lower qualities dither
    more, and dither noise can compress worse). Rungs are skipped while the last
    size is far above the target (assuming ~15 % less per rung) or while sizes
    stop falling; the last encode is kept for the lowest rung."""
    qualities = sorted(qualities, reverse=True)
    sizes = {}
    i, step, previous = 0, 1, None
    while i < len(qualities) and len(sizes) < max_encodes:
        if len(sizes) == max_encodes - 1:
            i = len(qualities) - 1
        q = qualities[i]
        data = encode(q)
        sizes[q] = len(data)
        if len(data) <= target:
            return Fit(q, data, None, len(sizes), sizes)
        data = None
        step = step * 2 if previous is not None and sizes[q] > 0.95 * previous else 1
        previous = sizes[q]
        skip = int(math.log(sizes[q] / target) / math.log(1 / 0.85))
        i += max(step, skip)
        if i >= len(qualities) and qualities[-1] not in sizes:
            i = len(qualities) - 1
    return Fit(None, None, min(sizes.values()), len(sizes), sizes)


def ladder_up(encode, target, qualities, *, max_encodes=MAX_ENCODES):
    """Like ladder, but from the lowest rung up, for when the answer is expected
    near the bottom: the highest rung that fits before the first that does not.
    Skips rungs while far below the target (about 15 % more per rung) and steps
    back one rung at a time after a skip overshoots."""
    qualities = sorted(qualities)
    sizes, best_i, best = {}, None, None
    i, bad_i = 0, len(qualities)
    while i < bad_i and len(sizes) < max_encodes:
        q = qualities[i]
        data = encode(q)
        sizes[q] = len(data)
        if len(data) > target:
            bad_i = i
            i = (best_i if best_i is not None else -1) + 1
            if best_i is None:
                break
            continue
        best_i, best = i, data
        skip = max(0, int(math.log(target / len(data)) / math.log(1 / 0.85)) - 1)
        i = min(i + 1 + skip, bad_i - 1) if i + 1 < bad_i else bad_i
        if i == best_i:
            break
    data = None
    best_q = qualities[best_i] if best_i is not None else None
    return Fit(best_q, best, None if best is not None else min(sizes.values()), len(sizes), sizes)


def ladder_from(encode, target, qualities, start):
    """The highest of `qualities` that fits, from `start` (where the answer is expected): up while
    the encodes fit, else down until one does. For a cheap proxy's prediction (non-monotonic sizes
    are taken as they come: the first rung over the target ends the climb)."""
    qualities = sorted(qualities)
    i = min(range(len(qualities)), key=lambda k: abs(qualities[k] - start))
    sizes, best_i, best = {}, None, None
    step = 1
    while 0 <= i < len(qualities):
        data = encode(qualities[i])
        sizes[qualities[i]] = len(data)
        fits = len(data) <= target
        if fits:
            best_i, best = i, data
        if len(sizes) == 1:
            step = 1 if fits else -1
        elif fits != (step == 1):
            break
        if step == -1 and fits:
            break
        i += step
    best_q = qualities[best_i] if best_i is not None else None
    return Fit(best_q, best, None if best is not None else min(sizes.values()), len(sizes), sizes)


# A repack's size ratio (packed / trial) measured at one quality predicts its neighbours' within 0.1-0.3 %
# (jpegli + mozjpeg on the corpus's photos) and tends to grow with q: after a pack, a neighbour is packed
# only when predicted to fit the target itself. Measured allowances on 16 photos at 1600x1200 and 12 Kodak,
# 100 KB: +0.3 % 34 + 15 packs, 0 % 31 + 14, the same qualities; -0.2 % 28 + 13, one quality lower.
MAX_PACKS = 4
# Trials larger than the target over this are not kept (a repack saves at most 30 %: it cannot fit; made
# again if ever packed).
KEEP_BELOW_RATIO = 0.7
# Trials of a highest_within call before it bisects a bracket wider than 4.
MODEL_STEPS = 4


def fit_repacked(trial, pack, target, lo, hi, *, start, ratio, curve=None,
                 floor_ratio=None, hopeless=None):
    """Highest integer q in [lo, hi] with len(pack(trial(q))) <= target, for a codec whose last step
    is a lossless repack that costs several trials (jpegli's file repacked by mozjpeg: 3-7 jpegli
    encodes). The search runs on the trials' sizes times a repack ratio (packed / trial: `ratio`, a
    first guess, until packs measure it; between two packs it is interpolated, since it drifts with
    q by up to 0.5 % a step), and only the quality the prediction points at is packed. After a pack
    that fits (and is not within CLOSE_ENOUGH of the target), a higher quality is packed only where
    the prediction has it fit the target; so most searches pack once or twice.
    `curve`: see highest_within. `floor_ratio(q)`: the ratio measured cheaply (on a mosaic), asked when
    nothing is predicted to fit: lo's trial times it `hopeless` over the target, nothing is packed
    (size_at_lo is that prediction). Fit.encodes
    counts packs, Fit.proxy_encodes trials (each quality's trial is made once; kept unless far over the
    target)."""
    trials, kept, made = {}, {}, [0]   # q -> trial size; q -> its bytes, if they may be packed

    def trial_at(q):
        if q in kept:
            return kept[q]
        data = trial(q)
        made[0] += 1
        trials[q] = len(data)
        if len(data) <= target / KEEP_BELOW_RATIO:
            kept[q] = data
        return data

    def size_of(q):
        return trials[q] if q in trials else len(trial_at(q))

    ratios = {}    # measured: q -> packed / trial

    def ratio_at(q):
        """The ratio predicted at q: interpolated (in log) between the packs around it, else the nearest's."""
        below = max((p for p in ratios if p <= q), default=None)
        above = min((p for p in ratios if p >= q), default=None)
        if below is None or above is None or below == above:
            return ratios.get(below if above is None else above, ratio)
        t = (q - below) / (above - below)
        return math.exp((1 - t) * math.log(ratios[below]) + t * math.log(ratios[above]))

    def predicted(q):
        return size_of(q) * ratio_at(q)

    def highest(low, high, limit, near):
        return highest_within(predicted, limit, low, high, near, {q: predicted(q) for q in trials}, curve)

    packed, best_q, best = {}, None, None
    low, high, slack, q = lo, hi, AIM, start
    while len(packed) < MAX_PACKS and low <= high:
        q = highest(low, high, target * slack, q)
        if q is None:
            if best_q is not None:
                break          # nothing above the best fit is predicted to fit
            at_lo = size_of(lo) * floor_ratio(lo) if floor_ratio is not None and not packed and low == lo else 0
            if at_lo and at_lo > hopeless * target:
                return Fit(None, None, int(at_lo), 0, {}, proxy_encodes=made[0])
            q = low            # nor anything at all: the lowest quality, the last resort before downscaling
        data = pack(trial_at(q))
        packed[q], ratios[q], slack = len(data), len(data) / trials[q], 1.0
        if len(data) <= target:
            best_q, best, low = q, data, q + 1
            if len(data) >= CLOSE_ENOUGH * target:
                break
        else:
            high = q - 1
        data = None
    if best is None and lo not in packed:
        data = pack(trial_at(lo))
        packed[lo] = len(data)
        if len(data) <= target:
            best_q, best = lo, data
    size_at_lo = None if best is not None else min(packed.values())
    return Fit(best_q, best, size_at_lo, len(packed), packed, proxy_encodes=made[0])


def highest_within(size_at, limit, low, high, start, known, curve=None):
    """Highest integer q in [low, high] with size_at(q) <= limit (None: not even low), for sizes that grow
    with q; `known`: sizes already measured (q -> size). `curve(q)`: a typical log(size) at q, up to a
    constant (default: DEFAULT_SLOPE * q). Each step predicts log(size) as the last trial's plus k times
    the curve's rise, k fitted on the two trials nearest the last (1 with one trial), and tries the
    highest q predicted to fit, inside the bracket (largest q known to fit, smallest known not to);
    bisections after MODEL_STEPS trials."""
    known = dict(known)
    curve = curve or (lambda q: DEFAULT_SLOPE * q)
    ok = max((q for q, size in known.items() if low <= q <= high and size <= limit), default=low - 1)
    bad = min((q for q, size in known.items() if ok < q <= high and size > limit), default=high + 1)
    inside = [q for q in known if ok <= q <= bad]
    q = start if not inside else min(inside, key=lambda k: abs(k - start))
    steps = 0
    while bad - ok > 1:
        if q in known:
            q = _predicted_highest(known, q, limit, ok, bad, curve)
            if steps >= MODEL_STEPS and bad <= high and ok >= low and bad - ok > 4:
                q = (ok + bad) // 2      # the curve has not closed the bracket in time: bisect
        q = min(bad - 1, max(ok + 1, q))
        steps += 1
        known[q] = size_at(q)
        if known[q] <= limit:
            ok = q
        else:
            bad = q
    return ok if ok >= low else None


def _predicted_highest(known, q, limit, ok, bad, curve):
    """The highest q' in (ok, bad) whose size, predicted from the trial at q along `curve`, fits (else ok + 1)."""
    near = sorted(known, key=lambda k: abs(k - q))[:2]
    k = 1.0
    if len(near) == 2:
        a, b = sorted(near)
        rise = curve(b) - curve(a)
        if rise > 0:
            k = min(4.0, max(0.25, (math.log(known[b]) - math.log(known[a])) / rise))
    base = math.log(known[q]) - k * curve(q)
    fitting = [p for p in range(ok + 1, bad) if base + k * curve(p) <= math.log(limit)]
    return max(fitting, default=ok + 1)
