"""SSIMULACRA2 (libjxl's 2023 version) with OpenCV and numpy; imports nothing from the service.

A float32 re-implementation of libjxl's `tools/ssimulacra2.cc`: XYB colour space, six scales (2x2 box
downsampling in linear RGB), SSIM' and two edge-difference maps per channel, 1- and 4-norms, a fixed weighted
sum. It differs from libjxl in the blur (scipy's truncated Gaussian with zero padding, as the first numpy port
here had, instead of the recursive Gaussian: moves scores by about a point, docs/engine.md: 0.3-2.5) and in
skipping the terms whose weights are below _MIN_WEIGHT (moves scores by at most 0.002, see there). Scale: ~90
visually lossless, 80 no visible difference at 1:1, 70 high, 50 medium, 30 low.

`Reference` keeps everything about the original that the maps need, so scoring N trial encodes costs N
half-metrics. Images over PROXY_PIXELS are scored on a fixed mosaic of full-resolution tiles (never on a
downscale, which would hide the artefacts). `bench/score.py` times it against the numpy/scipy version.
"""

import copy

import cv2
import numpy as np
from PIL import Image

# Images above this many pixels are scored on a mosaic of 9 tiles of 256x256
# (0.6 MP: ~15 ms for the reference, ~20 ms per score here; the whole of a 12 MP
# image: 0.6 s + 0.8 s).
PROXY_PIXELS = 600_000
_TILE = 256
_C2 = 0.0009

# Jobs, not OpenCV calls, are what runs in parallel here (WORKERS defaults to the
# CPU count): a pool inside each call would only compete with the other workers.
cv2.setNumThreads(1)

# The 108 weights of libjxl's Msssim::Score() (2023 retuning), in its order:
# channel X,Y,B; scale 1:1..1:32; norm 1,4; maps SSIM', ringing, blurring.
_WEIGHTS = np.array([
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0, 0.0004371155730107379, 0.0,
    1.1041726426657346, 0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0,
    1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0, 1.8787594979546387,
    10.94906990605142, 0.0, 0.0007289346991508072, 0.9677937080626833, 0.0, 0.00014003424285435884, 0.9981766977854967,
    0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0, 0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0,
    7.466890328078848, 0.0, 17.445833984131262, 0.0006235601634041466, 0.0, 0.0, 6.683678146179332,
    0.00037724407979611296, 1.027889937768264, 225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361,
    0.001237755635509985, 176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408,
    0.0, 0.0, 0.0, 34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0008680556573291698,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0004179171803251336, 0.0017290828234722833, 0.0, 0.0020827005846636437, 0.0, 0.0, 8.826982764996862,
    23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682, 0.9834382792465353, 0.0012286405048278493,
    171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
])
assert _WEIGHTS.size == 108

# Weights below this are dropped: 27 of libjxl's 52 non-zero weights, 0.02 in all
# against 888 for the rest. On the 24 Kodak photos under JPEG q20-q95, 4:2:0-only,
# WebP q90 and chroma-only blur they moved no score by more than 0.0011, and cost
# a third of the time (all of X at 1:1, of B at 1:1 to 1:4, of scale 1:32).
_MIN_WEIGHT = 0.01
_W = np.where(_WEIGHTS >= _MIN_WEIGHT, _WEIGHTS, 0.0).reshape(3, 6, 2, 3)
# Which of the 2 norms x 3 maps are computed, per (channel, scale).
_NEEDS = _W != 0
_SCALES = int(np.flatnonzero(_NEEDS.any(axis=(0, 2, 3)))[-1]) + 1
_CHANNELS = _NEEDS.any(axis=(2, 3))   # (channel, scale) -> plane needed at all

# sRGB transfer curve as a lookup table for 8-bit input.
_v = np.arange(256, dtype=np.float64) / 255.0
_LINEAR = np.where(_v <= 0.04045, _v / 12.92, ((_v + 0.055) / 1.055) ** 2.4).astype(np.float32)
del _v

# libjxl's opsin absorbance matrix and bias (lib/jxl/cms/opsin_params.h), as one
# affine map for cv2.transform.
_BIAS = 0.0037930732552754493
_OPSIN = np.array([
    [0.30, 0.622, 0.078, _BIAS],
    [0.23, 0.692, 0.078, _BIAS],
    [0.24342268924547819, 0.20476744424496821, 0.55180986650955360, _BIAS],
], dtype=np.float32)
# MakePositiveXYB after the cube roots m0, m1, m2 (each less cbrt(bias)), one
# affine row per plane: X = 14 * (m0 - m1) / 2 + 0.42, Y = (m0 + m1) / 2 + 0.01,
# B = m2 - (m0 + m1) / 2 + 0.55 (cbrt(bias) cancels in X and B).
_BIAS_CBRT = float(np.cbrt(_BIAS))
_MIX = np.array([
    [7.0, -7.0, 0.0, 0.42],
    [0.5, 0.5, 0.0, 0.01 - _BIAS_CBRT],
    [-0.5, -0.5, 1.0, 0.55],
], dtype=np.float32)

# scipy.ndimage.gaussian_filter(sigma=1.5)'s kernel (truncate 4: radius 6) with
# zero padding: the blur of the numpy port this one replaced, kept so that the
# scores (and so the calibrated thresholds) stay the same.
_k = np.exp(-0.5 * (np.arange(-6, 7) / 1.5) ** 2)
_KERNEL = (_k / _k.sum()).astype(np.float32)
del _k


def _blur(plane, scale=1.0, delta=0.0, dst=None):
    """scale * blur(plane) + delta, in one pass (a scale of -1 is exact)."""
    column = _KERNEL if scale == 1.0 else _KERNEL * np.float32(scale)
    return cv2.sepFilter2D(plane, -1, _KERNEL, column, dst=dst, delta=delta, borderType=cv2.BORDER_CONSTANT)


def _linear(rgb8):
    if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[2] != 3:
        raise ValueError("expected a uint8 RGB array (height, width, 3)")
    return cv2.LUT(np.ascontiguousarray(rgb8), _LINEAR)


def _downsample(linear):
    """2x2 box average, edge pixels repeated for odd sizes (as libjxl)."""
    h, w = linear.shape[:2]
    if h % 2 or w % 2:
        linear = cv2.copyMakeBorder(linear, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    # Bilinear at exactly half the size samples between each 2x2 block's
    # centres: their plain mean (to 1 ulp), 3x faster than INTER_AREA.
    return cv2.resize(linear, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_LINEAR)


def _xyb(linear, channels):
    """Linear RGB (h, w, 3) -> [X, Y, B] planes as MakePositiveXYB, None for
    those not in `channels` (3 booleans)."""
    # All 3 mixes even where B is not needed: cv2.transform has fast paths for
    # 3 -> 3 and 3 -> 1 channels only (3 -> 2 and 2 -> 1 took 9x longer).
    # The mix is >= bias > 0 (positive coefficients, linear >= 0): no clamp needed.
    mixed = cv2.transform(linear, _OPSIN)
    np.cbrt(mixed, out=mixed)
    return [cv2.transform(mixed, _MIX[c:c + 1]) if channels[c] else None for c in range(3)]


def _norms(needs, m):
    """[1-norm, 4-norm] of a non-negative map, each only where `needs` says;
    squares `m` in place."""
    n1 = cv2.sumElems(m)[0] / m.size if needs[0] else 0.0
    n4 = (cv2.norm(np.square(m, out=m), cv2.NORM_L2SQR) / m.size) ** 0.25 if needs[1] else 0.0
    return n1, n4


class _Plane:
    """One XYB plane of the original at one scale, with the terms of its maps
    that depend on it alone.

    SSIM' is 1 - num_m * num_s / denom with num_m = 1 - (mu1 - mu2)^2,
    num_s = 2 s12 + C2, denom = s11 + s22 + C2, where sXY = blur(planeX planeY)
    - muX muY is built negated by one fused accumulation after its blur. The
    terms are formed the same way for both images, so that an image scored
    against itself gets SSIM' and edge maps of exactly 0 (and 100), as before.
    """
    __slots__ = ("mu", "neg_s11", "one_d1", "plane")

    def __init__(self, plane, needs):
        mu = _blur(plane)
        if needs[:, 0].any():
            self.plane, self.mu = plane, mu
            self.neg_s11 = _blur(np.square(plane), -1.0)
            cv2.accumulateProduct(mu, mu, self.neg_s11)
        if needs[:, 1:].any():
            # 1 + |plane1 - mu1|, the denominator of the edge ratio.
            one_d1 = self.one_d1 = cv2.absdiff(plane, mu)
            one_d1 += 1.0

    def norms(self, needs, plane, maps):
        """(2, 3) norms of the distorted `plane` against this one, zero where not
        needed; `maps`: 4 scratch planes of its shape."""
        out = np.zeros((2, 3))
        mu2, a, b, c = maps
        _blur(plane, dst=mu2)
        if needs[:, 0].any():
            mu1 = self.mu
            neg_s12 = _blur(cv2.multiply(self.plane, plane, dst=a), -1.0, dst=b)
            cv2.accumulateProduct(mu1, mu2, neg_s12)
            num_s = cv2.addWeighted(neg_s12, -1.0, neg_s12, -1.0, _C2, dst=b)
            neg_s22 = _blur(np.square(plane, out=c), -1.0, dst=a)
            cv2.accumulateProduct(mu2, mu2, neg_s22)
            denom = cv2.addWeighted(self.neg_s11, -1.0, neg_s22, -1.0, _C2, dst=a)
            num_m = cv2.subtract(mu1, mu2, dst=c)
            np.square(num_m, out=num_m)
            # Scalar operands in numpy, in place: cv2 takes a slow path for them.
            np.subtract(1.0, num_m, out=num_m)
            ssim = cv2.divide(cv2.multiply(num_m, num_s, dst=c), denom, dst=c)
            np.subtract(1.0, ssim, out=ssim)
            out[:, 0] = _norms(needs[:, 0], np.maximum(ssim, 0.0, out=ssim))
        if needs[:, 1:].any():
            # edge = (1 + |plane2 - mu2|) / (1 + |plane1 - mu1|) - 1;
            # ringing = max(edge, 0), blurring = max(-edge, 0).
            edge = cv2.absdiff(plane, mu2, dst=c)
            edge += 1.0
            edge = cv2.divide(edge, self.one_d1, dst=c)
            edge -= 1.0
            if needs[:, 1].any():
                out[:, 1] = _norms(needs[:, 1], np.maximum(edge, 0.0, out=a))
            if needs[:, 2].any():
                blurring = np.negative(edge, out=edge)
                out[:, 2] = _norms(needs[:, 2], np.maximum(blurring, 0.0, out=blurring))
        return out


class Reference:
    """An original image (uint8 RGB array) prepared for scoring many distortions:
    its XYB planes, their blurs and the SSIM' and edge-map terms that depend on
    the original alone are computed once."""

    def __init__(self, rgb8):
        self.shape = rgb8.shape
        self.scales = []
        linear = _linear(rgb8)
        for scale in range(_SCALES):
            if scale:
                linear = _downsample(linear)
            if linear.shape[0] < 8 or linear.shape[1] < 8:
                break
            planes = _xyb(linear, _CHANNELS[:, scale])
            self.scales.append([None if p is None else _Plane(p, _NEEDS[c, scale]) for c, p in enumerate(planes)])

    def score(self, rgb8):
        """SSIMULACRA2 of a uint8 RGB array of the same shape against the original."""
        if rgb8.shape != self.shape:
            raise ValueError("distorted image has another size than the reference")
        norms = np.zeros((3, len(self.scales), 2, 3))
        linear = _linear(rgb8)
        for s, ref in enumerate(self.scales):
            if s:
                linear = _downsample(linear)
            planes = _xyb(linear, _CHANNELS[:, s])
            # Scratch for the maps, shared by the channels: the OpenCV calls
            # write into it (dst=) instead of allocating ~20 arrays each.
            maps = [np.empty(linear.shape[:2], dtype=np.float32) for _ in range(4)]
            for c, plane in enumerate(planes):
                if plane is not None:
                    norms[c, s] = ref[c].norms(_NEEDS[c, s], plane, maps)
        # Missing scales (tiny images) contribute nothing, as in libjxl.
        total = float(np.sum(_W[:, : len(self.scales)] * norms)) * 0.9562382616834844
        total = 2.326765642916932 * total - 0.020884521182843837 * total**2 + 6.248496625763138e-05 * total**3
        if total <= 0:
            return 100.0
        return 100.0 - 10.0 * total**0.6276336467831387


def tiles(width, height, budget=PROXY_PIXELS, tile=_TILE):
    """Tile boxes (16-aligned, so codec blocks line up) spread evenly over an
    image larger than `budget` pixels, about `budget` pixels in all; None if
    the image is small enough to use whole."""
    if width * height <= budget:
        return None
    n = max(1, int(round(np.sqrt(budget) / tile)))
    tw, th = min(tile, width), min(tile, height)
    xs = np.linspace(0, width - tw, n).astype(int) // 16 * 16
    ys = np.linspace(0, height - th, n).astype(int) // 16 * 16
    return [(int(x), int(y), int(x) + tw, int(y) + th) for y in ys for x in xs]


def mosaic(image, boxes):
    """The tiles `boxes` of `image` side by side (n x n), as one PIL image."""
    n = int(round(np.sqrt(len(boxes))))
    tw, th = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
    out = Image.new(image.mode, (tw * n, th * n))
    for i, box in enumerate(boxes):
        out.paste(image.crop(box), ((i % n) * tw, (i // n) * th))
    return out


def proxy(image, boxes):
    """The pixels that stand for `image` (PIL or uint8 array) in scores: itself, or `mosaic(image, boxes)`'s."""
    if boxes is None:
        return np.asarray(image)
    n = int(round(np.sqrt(len(boxes))))
    tw, th = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
    array = isinstance(image, np.ndarray)
    out = np.empty((th * n, tw * n, image.shape[2] if array else len(image.getbands())), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        tile = image[y0:y1, x0:x1] if array else np.asarray(image.crop((x0, y0, x1, y1)))
        out[(i // n) * th:(i // n + 1) * th, (i % n) * tw:(i % n + 1) * tw] = tile
    return out


# Compositing over white and black in float32, as rgb * a + bg * (1 - a) + 0.5
# truncated, with a = alpha / 255: the same operations, from tables where they
# depend on one byte (4x faster than the numpy expression, same bytes).
_FLOAT = np.arange(256, dtype=np.float32)
_ALPHA = _FLOAT / 255.0
_WHITE = 255 * (1.0 - _ALPHA)


def _on_backgrounds(rgba):
    """An RGBA uint8 array -> (RGB on white, RGB on black), uint8."""
    rgba = np.ascontiguousarray(rgba)
    alpha = cv2.cvtColor(cv2.extractChannel(rgba, 3), cv2.COLOR_GRAY2RGB)
    black = cv2.multiply(cv2.LUT(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), _FLOAT), cv2.LUT(alpha, _ALPHA))
    white = cv2.add(black, cv2.LUT(alpha, _WHITE))
    out = []
    for x in (white, black):
        x += 0.5
        out.append(np.minimum(x, 255.0, out=x).astype(np.uint8))
    return out


def _mode(image, alpha):
    """A PIL image or uint8 array as RGBA or RGB (an array's alpha dropped or made opaque, as convert() does;
    which copies even when the mode is already right: 5 ms per 2 MP)."""
    if isinstance(image, np.ndarray):
        if image.shape[2] == (4 if alpha else 3):
            return image
        return np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]) if alpha else image[:, :, :3].copy()
    return image if image.mode == ("RGBA" if alpha else "RGB") else image.convert("RGBA" if alpha else "RGB")


class Scorer:
    """Scores PIL images (or uint8 arrays) of the original's size against the original (a PIL image or array).

    Alpha images are scored on white and on black and the worse score is kept,
    so a change that only shows on one background still counts.
    """

    def __init__(self, original):
        array = isinstance(original, np.ndarray)   # a uint8 RGB(A) array: the same references as its PIL image's
        self.size = original.shape[1::-1] if array else original.size
        self.boxes = tiles(*self.size)
        pixels = proxy(original, self.boxes)
        self.alpha = original.shape[2] == 4 if array else original.mode == "RGBA"
        self.refs = [Reference(p) for p in (_on_backgrounds(pixels) if self.alpha else [pixels])]

    def of_mosaic(self):
        """A scorer, on these references, of images the size of `mosaic(original, self.boxes)` (their pixels)."""
        other = copy.copy(self)
        other.size, other.boxes = (self.refs[0].shape[1], self.refs[0].shape[0]), None
        return other

    def score(self, image):
        """Score a PIL image, or a uint8 RGB or RGBA array, of the original's size."""
        return self.score_tiles(self.proxy_pixels(image))

    def proxy_pixels(self, image):
        """The pixels of `image` score() measures (its proxy; an array's mode set on them alone), for score_tiles()."""
        array = isinstance(image, np.ndarray)
        if (image.shape[1::-1] if array else image.size) != self.size:
            raise ValueError("distorted image has another size than the original")
        return _mode(proxy(image, self.boxes), self.alpha) if array else proxy(_mode(image, self.alpha), self.boxes)

    def score_upscaled(self, small):
        """Score a downscaled result as seen upscaled back to the original size
        (Lanczos), resampling only the proxy tiles instead of the whole image."""
        small = _mode(small, self.alpha)
        if self.boxes is None:
            return self.score_tiles(np.asarray(small.resize(self.size, Image.Resampling.LANCZOS)))
        sx, sy = small.width / self.size[0], small.height / self.size[1]
        n = int(round(np.sqrt(len(self.boxes))))
        rows = []
        for r in range(n):
            rows.append(np.concatenate([
                np.asarray(small.resize((b[2] - b[0], b[3] - b[1]), Image.Resampling.LANCZOS,
                                        box=(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)))
                for b in self.boxes[r * n:(r + 1) * n]], axis=1))
        return self.score_tiles(np.concatenate(rows, axis=0))

    def score_tiles(self, pixels):
        if self.alpha:
            return min(ref.score(p) for ref, p in zip(self.refs, _on_backgrounds(pixels), strict=True))
        return self.refs[0].score(pixels)


def ssimulacra2(original, distorted):
    """SSIMULACRA2 of two same-size PIL images (RGB or RGBA)."""
    return Scorer(original).score(distorted)
