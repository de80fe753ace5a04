"""python -m bench.score --corpus DIR: the SSIMULACRA2 scorer against an older version of itself.

Times both on the same pairs (original, JPEG or WebP of it), interleaved so that load
from other work on the machine hits both alike, and reports per image class:
  one result  - Scorer(original) + one score (what a target-size job pays),
  per trial   - one more score with the Scorer reused (what each auto-search trial pays),
and the largest |new - old| score difference. The old scorer is read from git
(`--old REV`, default the last commit before the OpenCV port), so the comparison
needs nothing but the repository.
"""

import argparse
import importlib.util
import io
import pathlib
import statistics
import subprocess
import sys
import time

from PIL import Image

from imgsmaller.engine import score as new

from . import corpus

# The last commit whose engine/score.py is the numpy/scipy scorer.
OLD_REV = "7aeeeb6"
REPO = pathlib.Path(__file__).resolve().parent.parent


def load_old(rev):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:imgsmaller/engine/score.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("score_old", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:imgsmaller/engine/score.py", "exec"), module.__dict__)
    return module


def encoded(image, fmt, quality):
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as out:
        return out.convert(image.mode)


def classes(folder, limit):
    """-> {class name: [(original, [distorted, ...]), ...]} from the corpus."""
    photos, graphics = [], []
    for path in sorted(pathlib.Path(folder).iterdir()):
        if path.suffix.lower() != ".png":
            continue
        with Image.open(path) as image:
            image.load()
            if corpus.is_graphic(image):
                graphics.append(image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"))
            else:
                photos.append(image.convert("RGB"))
    photos = photos[:limit]
    qualities = (30, 60, 90)
    out = {"Kodak 768x512 (0.39 MP, whole)": [(p, [encoded(p, "JPEG", q) for q in qualities]) for p in photos]}
    # 1600 px photos: full-resolution crops of the corpus (no upscaling, which
    # would smooth away the detail), one mosaic per few photos.
    big = []
    for i in range(0, len(photos), 4):
        rng_photos = photos[i:] + photos[:i]
        m = corpus.mosaic(rng_photos, 1600, 1200)
        big.append((m, [encoded(m, "JPEG", q) for q in qualities]))
    out["1600x1200 (1.9 MP, 0.59 MP tiles)"] = big
    m = corpus.mosaic(photos)
    out["4032x3024 (12 MP, 0.59 MP tiles)"] = [(m, [encoded(m, "JPEG", q) for q in (40, 80)])]
    out["graphics, WebP q50 (alpha: 2 refs)"] = [(g, [encoded(g, "WEBP", 50)]) for g in graphics]
    return out


def timed(fn, *args):
    # CPU time of this thread (OpenCV runs single-threaded here): on a machine
    # shared with other work, wall time mostly measures the neighbours.
    started = time.thread_time()
    value = fn(*args)
    return time.thread_time() - started, value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.score")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--old", default=OLD_REV, help="git revision of the scorer to compare with")
    parser.add_argument("--limit", type=int, default=24, help="photos to use")
    args = parser.parse_args(argv)
    old = load_old(args.old)
    rows = []
    for name, pairs in classes(args.corpus, args.limit).items():
        t = {k: [] for k in ("old_one", "new_one", "old_trial", "new_trial")}
        deltas, scores = [], []
        for original, distorted in pairs:
            for image in distorted:
                dt_old, old_scorer = timed(old.Scorer, original)
                dt, s_old = timed(old_scorer.score, image)
                t["old_one"].append(dt_old + dt)
                dt_new, new_scorer = timed(new.Scorer, original)
                dt, s_new = timed(new_scorer.score, image)
                t["new_one"].append(dt_new + dt)
                t["old_trial"].append(timed(old_scorer.score, image)[0])
                t["new_trial"].append(timed(new_scorer.score, image)[0])
                deltas.append(abs(s_new - s_old))
                scores.append(s_old)
        med = {k: statistics.median(v) * 1000 for k, v in t.items()}
        rows.append((name, len(deltas), med, max(deltas), statistics.median(deltas),
                     min(scores), max(scores)))
        print(f"... {name}: done", file=sys.stderr)
    print(f"old = {args.old}:imgsmaller/engine/score.py, new = working tree; median CPU ms per score")
    print()
    print("| images | pairs | one result old → new | speed-up | per trial old → new | speed-up "
          "| max \\|Δ\\| | median \\|Δ\\| | scores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, med, dmax, dmed, lo, hi in rows:
        print(f"| {name} | {n} | {med['old_one']:.0f} → {med['new_one']:.0f} | {med['old_one'] / med['new_one']:.1f}× "
              f"| {med['old_trial']:.0f} → {med['new_trial']:.0f} | {med['old_trial'] / med['new_trial']:.1f}× "
              f"| {dmax:.4f} | {dmed:.4f} | {lo:.0f}–{hi:.0f} |")


if __name__ == "__main__":
    main()
