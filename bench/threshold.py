"""python -m bench.threshold --corpus DIR: what each auto threshold saves on JPEG q95 photo uploads.

For every photo, encode with the engine's JPEG encoder over a quality grid,
score each against the upload, and report, per SSIMULACRA2 threshold, the
median and worst saving of the smallest encode that passes.
"""

import argparse
import io
import statistics

from PIL import Image

from imgsmaller.engine import encoders
from imgsmaller.engine.score import Scorer

from . import corpus

GRID = range(40, 100, 3)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.threshold")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--thresholds", default="70,75,78,80,85")
    parser.add_argument("--format", default="jpeg")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    savings = {t: [] for t in thresholds}
    for item in corpus.load(args.corpus):
        if item["kind"] != "photo":
            continue
        with Image.open(io.BytesIO(item["data"])) as im:
            image = im.convert("RGB")
        scorer = Scorer(image)
        enc = {"jpeg": lambda i: encoders.JpegEncoder(i, None), "webp": lambda i: encoders.WebpEncoder(i, None),
               "avif": lambda i: encoders.AvifEncoder(i, None)}[args.format](image)
        curve = []
        for q in GRID:
            data = enc.encode(q)
            with Image.open(io.BytesIO(data)) as out:
                curve.append((q, len(data), scorer.score(out.convert("RGB"))))
        line = []
        for t in thresholds:
            passing = [c for c in curve if c[2] >= t]
            size = min(c[1] for c in passing) if passing else len(item["data"])
            savings[t].append(1 - size / len(item["data"]))
            line.append(f"{t:.0f}:{1 - size / len(item['data']):.2f}")
        print(item["name"], " ".join(line), flush=True)
    for t in thresholds:
        print(f"threshold {t:.0f}: median saving {statistics.median(savings[t]):.3f}, "
              f"worst {min(savings[t]):.3f}, best {max(savings[t]):.3f}")


if __name__ == "__main__":
    main()
