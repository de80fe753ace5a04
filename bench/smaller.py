"""python -m bench.smaller --corpus DIR: result bytes vs the upload, and time, for the "never larger" rule (issue 9).

Uploads: a few corpus photos as JPEG q85 (a typical phone/web JPEG), one of them made
noisy and dark (a night photo's sensor noise, the hard case for AVIF), and optionally
the 12 MP mosaic of bench.corpus as JPEG q95. Jobs per upload: auto -> avif, webp, png,
and "original" at a 5 MB target (above every upload's size). One line per job: bytes,
bytes / upload, quality_score, time, warnings. Runs in about a minute on 2 cores.
"""

import argparse
import io
import pathlib
import time

import numpy as np
from PIL import Image

from imgsmaller import engine
from imgsmaller.errors import ServiceError

from .corpus import mosaic

PHOTOS = ("kodim04.png", "kodim13.png", "kodim23.png")
NIGHT_FROM = "kodim21.png"
JOBS = (("avif", None), ("webp", None), ("png", None), ("original", 5 * 1024 * 1024))
MAX_PIXELS = 50_000_000


def jpeg(image, quality):
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def night(image):
    """Dark, with strong per-pixel noise: what makes a night shot hard to re-encode small."""
    rng = np.random.default_rng(21)
    pixels = np.asarray(image.convert("RGB"), np.float32) * 0.35
    pixels += rng.normal(0, 9, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def uploads(folder, big):
    folder = pathlib.Path(folder)
    photos = [Image.open(folder / name).convert("RGB") for name in PHOTOS]
    items = [(name.replace(".png", ".jpg"), jpeg(photo, 85)) for name, photo in zip(PHOTOS, photos, strict=True)]
    items.append(("night (kodim21, noisy).jpg", jpeg(night(Image.open(folder / NIGHT_FROM)), 80)))
    if big:
        every = [Image.open(path).convert("RGB") for path in sorted(folder.glob("kodim*.png"))]
        items.append(("mosaic_12mp.jpg", jpeg(mosaic(every), 95)))
    return items


def run_one(data, output, target):
    started = time.perf_counter()
    try:
        result = engine.compress(data, output=output, target_size=target, max_pixels=MAX_PIXELS)
    except ServiceError as error:
        return None, time.perf_counter() - started, error.message
    return result, time.perf_counter() - started, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--big", action="store_true", help="add the 12 MP mosaic (about 40 s more)")
    args = parser.parse_args(argv)
    print("| upload | bytes | job | result bytes | / upload | score | time | warnings |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data in uploads(args.corpus, args.big):
        for output, target in JOBS:
            job = f"{output} {'auto' if target is None else f'{target // 1048576} MB'}"
            result, seconds, error = run_one(data, output, target)
            if result is None:
                print(f"| {name} | {len(data)} | {job} | failed: {error} | | | {seconds:.1f} s | |")
                continue
            warnings = "; ".join(getattr(result, "warnings", ()) or ()) or "–"
            print(f"| {name} | {len(data)} | {job} | {len(result.data)} | {len(result.data) / len(data):.2f} "
                  f"| {result.quality_score} | {seconds:.1f} s | {warnings} |", flush=True)


if __name__ == "__main__":
    main()
