"""SSIMULACRA2 (libjxl's 2023 version) in numpy/scipy; imports nothing from the service.

A float32 re-implementation of libjxl's `tools/ssimulacra2.cc`: XYB colour space,
six scales (2x2 box downsampling in linear RGB), SSIM' and two edge-difference
maps per channel, 1- and 4-norms, a fixed weighted sum. It differs from libjxl
only in the blur (scipy's truncated Gaussian with zero padding instead of the
recursive Gaussian), which moves scores by about a point (CODECS.md measured
0.3-2.5). Scale: ~90 visually lossless, 80 high, 70 good, 50 medium, 30 low.

`Reference` caches everything about the original, so scoring N trial encodes
costs N half-metrics. Images over PROXY_PIXELS are scored on a fixed mosaic of
full-resolution tiles (never on a downscale, which would hide the artefacts).
"""

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

# Images above this many pixels are scored on a mosaic of 9 tiles of 256x256
# (0.6 MP scores in ~0.3 s here; the whole of a 12 MP image would take ~6 s).
PROXY_PIXELS = 600_000
_TILE = 256
_C2 = np.float32(0.0009)

# The 108 weights of libjxl's Msssim::Score() (2023 retuning), in its order:
# channel X,Y,B; scale 1:1..1:32; norm 1,4; maps SSIM', ringing, blurring.
_WEIGHTS = np.array([
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0,
    0.0, 0.0004371155730107379, 0.0, 1.1041726426657346, 0.00066284834129271,
    0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0, 1.8422455520539298,
    11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0,
    1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072,
    0.9677937080626833, 0.0, 0.00014003424285435884, 0.9981766977854967,
    0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0, 0.0013648766163243398,
    0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296,
    1.027889937768264, 225.20515300849274, 0.0, 0.0, 19.213238186143016,
    0.0011401524586618361, 0.001237755635509985, 176.39317598450694, 0.0, 0.0,
    24.43300999870476, 0.28520802612117757, 0.0004485436923833408, 0.0, 0.0, 0.0,
    34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0008680556573291698, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0,
    0.00016533814161379112, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0004179171803251336,
    0.0017290828234722833, 0.0, 0.0020827005846636437, 0.0, 0.0,
    8.826982764996862, 23.19243343998926, 0.0, 95.1080498811086,
    0.9863978034400682, 0.9834382792465353, 0.0012286405048278493,
    171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0, 0.0005130064588990679,
    0.0, 0.00010854057858411537,
])
assert _WEIGHTS.size == 108

# sRGB transfer curve as a lookup table for 8-bit input.
_v = np.arange(256, dtype=np.float64) / 255.0
_LINEAR = np.where(_v <= 0.04045, _v / 12.92, ((_v + 0.055) / 1.055) ** 2.4).astype(np.float32)
del _v

# libjxl's opsin absorbance matrix and bias (lib/jxl/cms/opsin_params.h).
_OPSIN = np.array([
    [0.30, 0.622, 0.078],
    [0.23, 0.692, 0.078],
    [0.24342268924547819, 0.20476744424496821, 0.55180986650955360],
], dtype=np.float32)
_BIAS = np.float32(0.0037930732552754493)
_BIAS_CBRT = np.cbrt(_BIAS)


def _blur(plane):
    return gaussian_filter(plane, 1.5, mode="constant", cval=0.0)


def _downsample(linear):
    """2x2 box average, edge pixels repeated for odd sizes (as libjxl)."""
    h, w, _ = linear.shape
    if h % 2:
        linear = np.concatenate([linear, linear[-1:]], axis=0)
    if w % 2:
        linear = np.concatenate([linear, linear[:, -1:]], axis=1)
    return 0.25 * (linear[0::2, 0::2] + linear[1::2, 0::2] + linear[0::2, 1::2] + linear[1::2, 1::2])


def _xyb(linear):
    """Linear RGB (h, w, 3) -> list of 3 positive XYB planes, as MakePositiveXYB."""
    r, g, b = linear[..., 0], linear[..., 1], linear[..., 2]
    planes = []
    for row in _OPSIN:
        # Per-channel sums in float32: a (h, w, 3) @ (3, 3) matmul is slower.
        m = row[0] * r + row[1] * g
        m += row[2] * b
        m += _BIAS
        np.maximum(m, 0, out=m)
        m = np.cbrt(m, out=m)
        m -= _BIAS_CBRT
        planes.append(m)
    m0, m1, m2 = planes
    y = 0.5 * (m0 + m1)
    x = 0.5 * (m0 - m1)
    x *= 14.0
    x += 0.42
    m2 -= y
    m2 += 0.55
    y += 0.01
    return [x, y, m2]


def _linear(rgb8):
    return _LINEAR[rgb8]


# Which maps carry weight, per (channel, scale): a third of the full-resolution
# work (SSIM' of X and B at 1:1) has all-zero weights and is skipped.
_W = _WEIGHTS.reshape(3, 6, 2, 3)
_USES_SSIM = _W[:, :, :, 0].any(axis=2)
_USES_EDGE = _W[:, :, :, 1:].any(axis=(2, 3))


def _norms(m):
    """(1-norm, 4-norm) of a non-negative float32 map."""
    m2 = m * m
    return float(m.mean(dtype=np.float64)), float(np.mean(m2 * m2, dtype=np.float64)) ** 0.25


class _Scale:
    __slots__ = ("planes", "mu", "sigma")

    def __init__(self, planes, scale):
        self.planes = planes
        self.mu = [_blur(p) for p in planes]
        self.sigma = [_blur(p * p) if _USES_SSIM[c, scale] else None for c, p in enumerate(planes)]


class Reference:
    """An original image (uint8 RGB array) prepared for scoring many distortions."""

    def __init__(self, rgb8):
        self.shape = rgb8.shape
        self.scales = []
        linear = _linear(rgb8)
        for scale in range(6):
            if scale:
                linear = _downsample(linear)
            if linear.shape[0] < 8 or linear.shape[1] < 8:
                break
            self.scales.append(_Scale(_xyb(linear), scale))

    def score(self, rgb8):
        if rgb8.shape != self.shape:
            raise ValueError("distorted image has another size than the reference")
        norms = np.zeros((3, len(self.scales), 2, 3), dtype=np.float64)
        linear = _linear(rgb8)
        for s, ref in enumerate(self.scales):
            if s:
                linear = _downsample(linear)
            planes = _xyb(linear)
            for c in range(3):
                img1, mu1, s11 = ref.planes[c], ref.mu[c], ref.sigma[c]
                img2 = planes[c]
                mu2 = _blur(img2)
                if _USES_SSIM[c, s]:
                    s22 = _blur(img2 * img2)
                    s12 = _blur(img1 * img2)
                    mu12 = mu1 * mu2
                    num_m = 1.0 - (mu1 - mu2) ** 2
                    num_s = 2 * (s12 - mu12) + _C2
                    denom_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + _C2
                    d = np.maximum(1.0 - num_m * num_s / denom_s, 0.0)
                    norms[c, s, 0, 0], norms[c, s, 1, 0] = _norms(d)
                if _USES_EDGE[c, s]:
                    edge = (1.0 + np.abs(img2 - mu2)) / (1.0 + np.abs(img1 - mu1)) - 1.0
                    norms[c, s, 0, 1], norms[c, s, 1, 1] = _norms(np.maximum(edge, 0.0))
                    norms[c, s, 0, 2], norms[c, s, 1, 2] = _norms(np.maximum(-edge, 0.0))
        # Missing scales (tiny images) contribute nothing, as in libjxl.
        weights = _W[:, : len(self.scales)]
        total = float(np.sum(weights * np.abs(norms))) * 0.9562382616834844
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
    """The pixels that stand for `image` in scores: itself, or a mosaic of `boxes`."""
    return np.asarray(image if boxes is None else mosaic(image, boxes))


def _on_background(rgba, value):
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.clip(rgb * alpha + value * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


class Scorer:
    """Scores PIL images of the original's size against the original (a PIL image).

    Alpha images are scored on white and on black and the worse score is kept,
    so a change that only shows on one background still counts.
    """

    def __init__(self, original):
        self.size = original.size
        self.boxes = tiles(*original.size)
        pixels = proxy(original, self.boxes)
        if original.mode == "RGBA":
            self.refs = [Reference(_on_background(pixels, 255)), Reference(_on_background(pixels, 0))]
            self.alpha = True
        else:
            self.refs = [Reference(pixels)]
            self.alpha = False

    def score(self, image):
        """Score a PIL image of the original's size."""
        if image.size != self.size:
            raise ValueError("distorted image has another size than the original")
        image = image.convert("RGBA" if self.alpha else "RGB")
        return self._score(proxy(image, self.boxes))

    def score_upscaled(self, small):
        """Score a downscaled result as seen upscaled back to the original size
        (Lanczos), resampling only the proxy tiles instead of the whole image."""
        small = small.convert("RGBA" if self.alpha else "RGB")
        if self.boxes is None:
            return self._score(np.asarray(small.resize(self.size, Image.Resampling.LANCZOS)))
        sx, sy = small.width / self.size[0], small.height / self.size[1]
        n = int(round(np.sqrt(len(self.boxes))))
        rows = []
        for r in range(n):
            rows.append(np.concatenate([
                np.asarray(small.resize((b[2] - b[0], b[3] - b[1]), Image.Resampling.LANCZOS,
                                        box=(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)))
                for b in self.boxes[r * n:(r + 1) * n]], axis=1))
        return self._score(np.concatenate(rows, axis=0))

    def _score(self, pixels):
        if self.alpha:
            return min(self.refs[0].score(_on_background(pixels, 255)),
                       self.refs[1].score(_on_background(pixels, 0)))
        return self.refs[0].score(pixels)


def ssimulacra2(original, distorted):
    """SSIMULACRA2 of two same-size PIL images (RGB or RGBA)."""
    return Scorer(original).score(distorted)
