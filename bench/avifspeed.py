"""python -m bench.avifspeed --corpus DIR: AVIF (aom) speed setting vs bytes and time at equal quality.

For each photo and speed, the smallest encode with SSIMULACRA2 >= each threshold;
reports median bytes relative to speed 6 and median seconds per encode per megapixel.
"""

import argparse
import io
import statistics
import time

from PIL import Image

from imgsmaller.engine import auto, encoders, quality
from imgsmaller.engine.score import Scorer

from . import corpus


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.avifspeed")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--speeds", default="6,7,8,9,10")
    parser.add_argument("--thresholds", default="60,75")
    parser.add_argument("--limit", type=int, default=6)
    args = parser.parse_args(argv)
    speeds = [int(s) for s in args.speeds.split(",")]
    rel = {(s, t): [] for s in speeds for t in args.thresholds.split(",")}
    secs = {s: [] for s in speeds}
    photos = [i for i in corpus.load(args.corpus) if i["kind"] == "photo"][: args.limit]
    for item in photos:
        with Image.open(io.BytesIO(item["data"])) as im:
            image = im.convert("RGB")
        scorer = Scorer(image)
        for t in args.thresholds.split(","):
            sizes = {}
            for speed in speeds:
                enc = encoders.AvifEncoder(image, None, speed=speed)

                def trial(q, enc=enc, image=image, scorer=scorer):
                    start = time.perf_counter()
                    data = enc.encode(q)
                    secs[enc.speed].append((time.perf_counter() - start) / (image.width * image.height / 1e6))
                    return data, scorer.score(quality.decode(data))

                found = auto.lowest_passing(trial, 0, 100, float(t), 60, max_trials=8)
                sizes[speed] = len(found[1])
            for speed in speeds:
                rel[(speed, t)].append(sizes[speed] / sizes[speeds[0]])
            print(item["name"], t, {s: sizes[s] for s in speeds}, flush=True)
    for speed in speeds:
        print(f"speed {speed}: " + " ".join(
            f"bytes@{t} x{statistics.median(rel[(speed, t)]):.3f}" for t in args.thresholds.split(","))
              + f"  {statistics.median(secs[speed]):.2f} s/MP")


if __name__ == "__main__":
    main()
