"""Images made in code for the tests: photo-like content in any supported format."""

import io

import numpy as np
from PIL import Image


def photo(width=64, height=48, *, alpha=False, seed=0):
    """A photo-like RGB(A) image: smooth gradients plus fine noise, so codecs have work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = 128 + 100 * np.sin(x / max(width, 1) * 6.0)
    g = 128 + 100 * np.cos(y / max(height, 1) * 5.0)
    b = 128 + 60 * np.sin((x + y) / max(width + height, 1) * 9.0)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if alpha:
        mask = np.clip(255 * x / max(width - 1, 1), 0, 255).astype(np.uint8)
        image.putalpha(Image.fromarray(mask, "L"))
    return image


def encode(image, fmt, **options):
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    if fmt == "jpeg" and image.mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()


def image_bytes(fmt="png", width=64, height=48, *, alpha=False, seed=0):
    return encode(photo(width, height, alpha=alpha, seed=seed), fmt)
