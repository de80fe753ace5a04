"""Benchmark inputs: photos as JPEG q95 uploads, graphics as PNG, and a 12 MP mosaic."""

import io
import pathlib

import numpy as np
from PIL import Image


def is_graphic(image):
    """Alpha, or few distinct colours: a screenshot, icon or logo rather than a photo."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return True
    small = image.convert("RGB").resize((min(image.width, 256), min(image.height, 256)))
    return len(small.getcolors(1 << 16) or range(1 << 16)) < 4096


def jpeg_q95(image):
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def load(folder, big=False):
    """-> list of dicts: name, kind ('photo'|'graphic'), data (the upload), format."""
    items, photos = [], []
    for path in sorted(pathlib.Path(folder).iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".avif"):
            continue
        with Image.open(path) as image:
            image.load()
            if is_graphic(image):
                items.append({"name": path.name, "kind": "graphic", "data": path.read_bytes(), "format": "png"})
            else:
                photos.append(image.convert("RGB"))
                items.append({"name": path.stem + ".jpg", "kind": "photo", "data": jpeg_q95(image), "format": "jpeg"})
    if big and photos:
        items.append({"name": "mosaic_12mp.jpg", "kind": "photo", "data": jpeg_q95(mosaic(photos)), "format": "jpeg",
                      "big": True})
    return items


def mosaic(photos, width=4032, height=3024):
    """A 12 MP photo made of full-resolution crops of the corpus photos (6 x 6 tiles)."""
    canvas = Image.new("RGB", (width, height))
    tw, th = width // 6, height // 6
    rng = np.random.default_rng(12)
    for i in range(36):
        photo = photos[i % len(photos)]
        x = int(rng.integers(0, max(1, photo.width - tw)))
        y = int(rng.integers(0, max(1, photo.height - th)))
        canvas.paste(photo.crop((x, y, x + tw, y + th)), ((i % 6) * tw, (i // 6) * th))
    return canvas
