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


def resized_set(folder, out, width, height, photos=12, mosaics=4):
    """PNGs of `width` x `height` in `out`: the first `photos` corpus photos upscaled (Lanczos, portrait ones
    turned, centre-cropped) and `mosaics` mosaics of full-resolution crops of them (6 photos each), for
    timing the engine on a mid-size photo when the corpus has none of that size."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    originals = [item for item in load(folder) if item["kind"] == "photo"]
    pictures = [Image.open(pathlib.Path(folder) / (pathlib.Path(i["name"]).stem + ".png")).convert("RGB")
                for i in originals]
    for image, item in zip(pictures[:photos], originals, strict=False):
        if image.height > image.width:
            image = image.transpose(Image.Transpose.ROTATE_90)
        scale = max(width / image.width, height / image.height)
        w, h = round(image.width * scale), round(image.height * scale)
        left, top = (w - width) // 2, (h - height) // 2
        big = image.resize((w, h), Image.Resampling.LANCZOS).crop((left, top, left + width, top + height))
        big.save(out / f"up_{pathlib.Path(item['name']).stem}.png", compress_level=1)
    for i in range(mosaics):
        mosaic(pictures[i * 6:(i + 1) * 6], width, height).save(out / f"mosaic{i}.png", compress_level=1)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=resized_set.__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="1600x1200")
    args = parser.parse_args()
    resized_set(args.corpus, args.out, *map(int, args.size.split("x")))
