"""python -m bench.floor --corpus DIR: where should the target search stop lowering quality and downscale?

For photos and byte budgets that bind, encode at several scales (each at the
highest quality that fits), upscale back to the original size and score with
SSIMULACRA2 against the original. For each codec, report which scale wins and
the quality the full-size encode needed at that point: the quality floor is the
quality below which a smaller picture at a higher quality scores better.
"""

import argparse
import io
import statistics

from PIL import Image

from imgsmaller.engine import encoders, search
from imgsmaller.engine.score import Scorer

from . import corpus

SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)


def encoder(fmt, image):
    if fmt == "jpegli":
        return encoders.JpegEncoder(image, None, backend="jpegli")
    if fmt == "jpeg":
        return encoders.JpegEncoder(image, None, backend="pillow")
    if fmt == "webp":
        return encoders.WebpEncoder(image, None)
    if fmt == "avif":
        return encoders.AvifEncoder(image, None)
    raise ValueError(fmt)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--formats", default="jpegli,jpeg,webp,avif")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--bpp", default="0.15,0.25,0.4", help="budgets in bits per pixel of the original")
    args = parser.parse_args(argv)
    photos = []
    for item in corpus.load(args.corpus):
        if item["kind"] == "photo":
            with Image.open(io.BytesIO(item["data"])) as im:
                photos.append((item["name"], im.convert("RGB")))
    photos = photos[: args.limit]
    for fmt in args.formats.split(","):
        wins = []
        for name, image in photos:
            scorer = Scorer(image)
            for bpp in (float(b) for b in args.bpp.split(",")):
                target = int(bpp * image.width * image.height / 8)
                rows = []
                for scale in SCALES:
                    size = (round(image.width * scale), round(image.height * scale))
                    scaled = image if scale == 1 else image.resize(size, Image.Resampling.LANCZOS)
                    enc = encoder(fmt, scaled)
                    found = search.fit(enc.encode, target, enc.qmin, enc.qmax, max_encodes=10)
                    if found.quality is None:
                        rows.append((scale, None, None))
                        continue
                    with Image.open(io.BytesIO(found.data)) as out:
                        up = out.convert("RGB").resize(image.size, Image.Resampling.LANCZOS)
                    rows.append((scale, found.quality, scorer.score(up)))
                full_q = rows[0][1]
                best = max((r for r in rows if r[2] is not None), key=lambda r: r[2])
                wins.append((full_q, best[0], rows[0][2], best[2]))
                print(f"{fmt:<7} {name:<12} {bpp:.2f}bpp full q={full_q} s={rows[0][2] and round(rows[0][2], 1)} "
                      f"| best scale {best[0]} q={best[1]} s={best[2]:.1f} | "
                      + " ".join(f"{s}:{q}:{sc and round(sc, 1)}" for s, q, sc in rows), flush=True)
        # The floor: full-size qualities where full size still won vs where a downscale won.
        kept = [q for q, scale, *_ in wins if scale == 1.0 and q is not None]
        lost = [q for q, scale, *_ in wins if scale < 1.0 and q is not None]
        print(f"== {fmt}: full size won at q {sorted(kept)}; downscale won when full size needed q {sorted(lost)}")
        if kept and lost:
            print(f"== {fmt}: min q where full size won {min(kept)}, max q where downscale won {max(lost)}, "
                  f"median {statistics.median(kept)} / {statistics.median(lost)}")


if __name__ == "__main__":
    main()
