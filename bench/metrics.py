"""Scores for the benchmark: SSIMULACRA2 (the engine's numpy implementation) and plain SSIM."""

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from imgsmaller.engine.decode import flatten, normalise, open_image
from imgsmaller.engine.score import Scorer


def reference(data):
    """The pixels the user holds: the upload decoded, oriented, 8-bit RGB(A)."""
    image, _ = open_image(data, max_pixels=1 << 40)
    return normalise(image)[0]


def decoded(data, size):
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        out = image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB")
    if out.size != size:  # downscaled output: judged upscaled back, as a viewer would
        out = out.resize(size, Image.Resampling.LANCZOS)
    return out


class Judge:
    def __init__(self, ref):
        self.ref = ref
        self.flat = flatten(ref) if ref.mode == "RGBA" else ref
        self._scorers = {}

    def _scorer(self, alpha):
        key = alpha and self.ref.mode == "RGBA"
        if key not in self._scorers:
            self._scorers[key] = Scorer(self.ref if key else self.flat)
        return self._scorers[key]

    def scores(self, data):
        out = decoded(data, self.ref.size)
        alpha = out.mode == "RGBA"
        s2 = self._scorer(alpha).score(out if alpha else out.convert("RGB"))
        base = self.ref if alpha and self.ref.mode == "RGBA" else self.flat
        return s2, ssim(flatten(base), flatten(out) if out.mode == "RGBA" else out)


def _luma(image):
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    return a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def ssim(a, b):
    """Classic SSIM (Wang et al. 2004) on luma, Gaussian window sigma 1.5."""
    x, y = _luma(a), _luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda v: gaussian_filter(v, 1.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())
