"""python -m bench.score --corpus DIR: the SSIMULACRA2 scorer against an older version of itself.

Times both on the same pairs (original, JPEG or WebP of it), interleaved so that load
from other work on the machine hits both alike, and reports per image class:
  one result  - Scorer(original) + one score (what a target-size job pays),
  per trial   - one more score with the Scorer reused (what each auto-search trial pays),
and the largest |new - old| score difference; then whole engine jobs (1600x1200 JPEG q95
uploads: JPEG at 100KB and auto) with either scorer patched into the engine. The old scorer is read from git
(`--old REV`, default the last commit before the OpenCV port), so the comparison
needs nothing but the repository.
"""

import argparse
import contextlib
import importlib.util
import io
import pathlib
import statistics
import subprocess
import sys
import time

from PIL import Image

from imgsmaller import engine
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


def load(folder):
    """-> (photos, graphics): the corpus PNGs as PIL images."""
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
    return photos, graphics


def mosaic_1600(photos, i):
    """A 1600 px photo from full-resolution crops of the corpus (upscaling a Kodak
    photo would smooth away its detail), starting at photo i."""
    return corpus.mosaic(photos[i:] + photos[:i], 1600, 1200)


def classes(photos, graphics):
    """-> {class name: [(original, [distorted, ...]), ...]}."""
    qualities = (30, 60, 90)
    out = {"Kodak 768x512 (0.39 MP, whole)": [(p, [encoded(p, "JPEG", q) for q in qualities]) for p in photos]}
    mosaics = (mosaic_1600(photos, i) for i in range(0, len(photos), 4))
    out["1600x1200 (1.9 MP, 0.59 MP tiles)"] = [(m, [encoded(m, "JPEG", q) for q in qualities]) for m in mosaics]
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


@contextlib.contextmanager
def scorer_in_engine(scorer_class):
    """Every engine module that imported Scorer sees `scorer_class` meanwhile."""
    patched = [m for name, m in sys.modules.items()
               if name.startswith("imgsmaller.engine") and getattr(m, "Scorer", None) is new.Scorer]
    for module in patched:
        module.Scorer = scorer_class
    try:
        yield
    finally:
        for module in patched:
            module.Scorer = new.Scorer


def engine_jobs(photos, old, count=3):
    """-> table rows: per job kind, median engine seconds and score seconds, old vs new."""
    uploads = []
    for i in range(count):
        buf = io.BytesIO()
        mosaic_1600(photos, i * 4).save(buf, "JPEG", quality=95)
        uploads.append(buf.getvalue())
    rows = []
    for kind, options in (("JPEG at 100KB", {"target_size": 100 * 1024}), ("auto JPEG", {})):
        t = {k: [] for k in ("old", "new", "old_score", "new_score")}
        deltas = []
        for data in uploads:
            scores = {}
            for name, cls in (("old", old.Scorer), ("new", new.Scorer)):
                with scorer_in_engine(cls):
                    result = engine.compress(data, output="jpeg", max_pixels=50_000_000, **options)
                t[name].append(result.settings["seconds"])
                t[name + "_score"].append(result.settings.get("score_seconds", float("nan")))
                scores[name] = result.quality_score
            deltas.append(abs(scores["new"] - scores["old"]))
        rows.append((kind, len(uploads), {k: statistics.median(v) for k, v in t.items()}, max(deltas)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.score")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--old", default=OLD_REV, help="git revision of the scorer to compare with")
    parser.add_argument("--limit", type=int, default=24, help="photos to use")
    args = parser.parse_args(argv)
    old = load_old(args.old)
    rows = []
    photos, graphics = load(args.corpus)
    photos = photos[:args.limit]
    for name, pairs in classes(photos, graphics).items():
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
    print()
    print("Engine jobs on 1600x1200 JPEG q95 uploads, median wall seconds (`Result.settings`):")
    print()
    print("| job | uploads | engine s old → new | of which quality_score old → new | max \\|Δ quality_score\\| |")
    print("|---|---|---|---|---|")
    for kind, n, med, dmax in engine_jobs(photos, old):
        score_cell = "—" if med["old_score"] != med["old_score"] else f"{med['old_score']:.3f} → {med['new_score']:.3f}"
        print(f"| {kind} | {n} | {med['old']:.3f} → {med['new']:.3f} | {score_cell} | {dmax:.2f} |")


if __name__ == "__main__":
    main()
