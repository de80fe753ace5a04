"""Images made in code for the tests: photo-like content in any supported format."""

import io

import numpy as np
import pillow_heif
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


def heic(image, *images, quality=80, **options):
    """HEIC bytes from pillow-heif's encoder (x265): the tests make their HEIC files at run time.
    More `images` make a multi-image file (`primary_index=` chooses the primary); `exif=`,
    `icc_profile=` are written as an iPhone would (orientation as the HEIF transform too)."""
    buffer = io.BytesIO()
    heif = pillow_heif.from_pillow(image)
    for other in images:
        heif.add_from_pillow(other)
    heif.save(buffer, quality=quality, **options)
    return buffer.getvalue()


def heic_10bit(width=64, height=48, seed=0):
    """A 10-bit HEIC of photo(): 16-bit samples in, x265's Main 10 profile out."""
    pixels = np.asarray(photo(width, height, seed=seed)).astype(np.uint16) * 257
    buffer = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(width, height), data=pixels.tobytes()).save(buffer, quality=90)
    return buffer.getvalue()
