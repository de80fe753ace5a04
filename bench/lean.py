"""python -m bench.lean --corpus DIR [--base REV] [--big] [--mid N] [--formats LIST]: the engine before and after.

Issue 11's "fewer encodes" measurement. The engine of git revision `--base` (default
`main`, extracted with `git archive`) and the engine of this checkout each run in a
child process; every job goes to both, one after the other, so that the load of a
shared machine weighs on both alike. The anchors for the byte targets (ImageMagick's
`jpeg:extent`, `cwebp -size`) run on the same jobs when installed. Every output is
scored here, by this checkout's SSIMULACRA2 (bench.metrics), so both engines are
judged alike. Prints one table: per format and target, median encodes, time, CPU
time, SSIMULACRA2 and bytes/target of before and after, and the outputs over target.
"""

import argparse
import base64
import functools
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from . import anchors, corpus, metrics
from .__main__ import fmt as _f
from .__main__ import lossless_png
from .__main__ import median as _median

KB = 1024
PHOTO_JOBS = [("jpeg", 100 * KB), ("jpeg", None), ("webp", 20 * KB), ("webp", 50 * KB), ("webp", 100 * KB),
              ("webp", None), ("png", None)]
GRAPHIC_JOBS = [("png", 20 * KB), ("png", 50 * KB), ("png", None), ("webp", 20 * KB), ("webp", None)]
BIG_JOBS = [("jpeg", None), ("jpeg", "10%"), ("jpeg", 1024 * KB),
            ("webp", 100 * KB), ("webp", None), ("png", 1_500_000), ("png", None)]
MAX_PIXELS = 50_000_000
ROOT = pathlib.Path(__file__).resolve().parent.parent

# The child: read {"data", "fmt", "target"} lines, answer with the result.
CHILD = r"""
import base64, json, resource, sys, time
from imgsmaller import engine
from imgsmaller.errors import ServiceError
for line in sys.stdin:
    job = json.loads(line)
    data = base64.b64decode(job["data"])
    cpu, start = time.process_time(), time.perf_counter()
    try:
        r = engine.compress(data, output=job["fmt"], target_size=job["target"], max_pixels=MAX_PIXELS)
        out = {"data": base64.b64encode(r.data).decode(), "encodes": r.encodes, "settings": r.settings}
    except ServiceError as error:
        out = {"error": error.message}
    out["seconds"] = time.perf_counter() - start
    out["cpu"] = time.process_time() - cpu
    print(json.dumps(out), flush=True)
""".replace("MAX_PIXELS", str(MAX_PIXELS))


class Engine:
    """One engine version in a child process."""

    def __init__(self, path):
        env = dict(os.environ, PYTHONPATH=str(path))
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd=str(path), text=True)

    def run(self, data, fmt, target):
        self.proc.stdin.write(json.dumps({"data": base64.b64encode(data).decode(), "fmt": fmt, "target": target})
                              + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "data" in out:
            out["data"] = base64.b64decode(out["data"])
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def extract(rev, into):
    """The imgsmaller package of git revision `rev`, in folder `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "imgsmaller"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def jobs_for(item, formats=None):
    if item.get("big"):
        jobs = BIG_JOBS
    else:
        jobs = PHOTO_JOBS if item["kind"] == "photo" else GRAPHIC_JOBS
    return [job for job in jobs if formats is None or job[0] in formats]


def mid_photos(folder, count):
    """`count` 1600x1200 photos as JPEG q95 uploads: mosaics of full-resolution crops of the corpus
    photos (as bench.score makes them), each starting at another photo."""
    photos = [item for item in corpus.load(folder) if item["kind"] == "photo"]
    pixels = [metrics.reference(item["data"]) for item in photos]
    step = max(1, len(pixels) // max(count, 1))
    return [{"name": f"mosaic1600_{i}.jpg", "kind": "photo", "mid": True, "format": "jpeg",
             "data": corpus.jpeg_q95(corpus.mosaic(pixels[i:] + pixels[:i], 1600, 1200))}
            for i in range(0, step * count, step)][:count]


def run(items, engines, log, out=None, formats=None):
    tools = anchors.available()
    rows = []
    for item in items:
        judge = metrics.Judge(metrics.reference(item["data"]))
        work = anchors.Work(item["data"], item["format"], lossless_png(judge.ref))
        for fmt, spec in jobs_for(item, formats):
            target = len(item["data"]) // 10 if spec == "10%" else spec   # "10%": of the upload
            runners = [(name, engine.run) for name, engine in engines]
            if target is not None and item["kind"] == "photo":
                anchor = {"jpeg": ("convert", anchors.convert_extent), "webp": ("cwebp", anchors.cwebp_size)}.get(fmt)
                if anchor and tools.get(anchor[0]):
                    runners.append((anchor[0], functools.partial(_anchor, anchor[1], work)))
            for name, fn in runners:
                result = fn(item["data"], fmt, target)
                rows.append(_row(item, fmt, target, name, result, judge, spec if spec == "10%" else None))
                log(_line(rows[-1]))
                if out is not None:
                    out.write(json.dumps(rows[-1]) + "\n")
                    out.flush()
        work.close()
    return rows


def _row(item, fmt, target, name, out, judge, label=None):
    row = {"image": item["name"], "big": bool(item.get("big")), "mid": bool(item.get("mid")), "kind": item["kind"],
           "format": fmt,
           "target": target, "label": label or ("auto" if target is None else f"{target // KB}KB"),
           "tool": name, "seconds": out["seconds"], "cpu": out.get("cpu"),
           "encodes": out.get("encodes"), "error": out.get("error"), "input_bytes": len(item["data"])}
    settings = out.get("settings") or {}
    row["cheap"] = settings.get("proxy_encodes", 0) + settings.get("scout_encodes", 0)
    if out.get("data"):
        row["bytes"] = len(out["data"])
        row["ssimulacra2"] = round(judge.scores(out["data"])[0], 3)
    return row


def _line(row):
    return (f"{row['image']:<20} {row['format']:<4} {row['label']:<7} {row['tool']:<7} {row.get('bytes')} "
            f"{row.get('ssimulacra2')} {row['encodes']}+{row['cheap']} {row['seconds']:.2f}s {row['error'] or ''}")


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _anchor(fn, work, data, fmt, target):
    cpu = _children_cpu()
    try:
        data, _, seconds = fn(work, target)
    except Exception as error:  # a failing anchor is recorded, not fatal
        return {"error": repr(error)[:200], "seconds": 0.0}
    return {"data": data, "seconds": seconds, "cpu": _children_cpu() - cpu, "encodes": None}


def report(rows, header):
    lines = [header, "",
             "| image set | format | target | n | encodes before → after (+cheap) | median s before → after"
             " (ratio) | CPU s before → after | SSIMULACRA2 before → after (Δ) | bytes/target before → after"
             " | over target before / after | anchor s (ratio after/anchor) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for row in rows:
        kind = "12 MP mosaic" if row["big"] else "1600x1200 mosaic" if row.get("mid") else row["kind"]
        key = (kind, row["format"], row["label"])
        groups.setdefault(key, {}).setdefault(row["tool"], []).append(row)
    for key, by_tool in groups.items():
        lines.append(_table_row(key, by_tool))
    return "\n".join(lines)


def _fill(label, rs):
    if label == "auto":
        return _median([r["bytes"] / r["input_bytes"] for r in rs if r.get("bytes")])
    return _median([r["bytes"] / r["target"] for r in rs if r.get("bytes")])


def _over(rs):
    return sum(1 for r in rs if r.get("bytes") and r["target"] and r["bytes"] > r["target"])


def _med(rs, field):
    return _median([r.get(field) for r in rs])


def _table_row(key, by_tool):
    before, after = by_tool.get("before", []), by_tool.get("after", [])
    anchor = next((v for k, v in by_tool.items() if k not in ("before", "after")), [])
    tb, ta = _med(before, "seconds"), _med(after, "seconds")
    sb, sa = _med(before, "ssimulacra2"), _med(after, "ssimulacra2")
    delta = sa - sb if sa is not None and sb is not None else None
    tanchor = _med(anchor, "seconds")
    return (
        f"| {key[0]} | {key[1]} | {key[2]}{' (bytes/upload)' if key[2] == 'auto' else ''} | {len(after)} | "
        f"{_f(_med(before, 'encodes'), '.0f')} (+{_f(_med(before, 'cheap'), '.0f')}) → "
        f"{_f(_med(after, 'encodes'), '.0f')} (+{_f(_med(after, 'cheap'), '.0f')}) | "
        f"{_f(tb, '.2f')} → {_f(ta, '.2f')} ({_f(ta / tb if ta and tb else None, '.2f')}) | "
        f"{_f(_med(before, 'cpu'), '.2f')} → {_f(_med(after, 'cpu'), '.2f')} | "
        f"{_f(sb, '.2f')} → {_f(sa, '.2f')} ({_f(delta, '+.2f')}) | "
        f"{_f(_fill(key[2], before), '.3f')} → {_f(_fill(key[2], after), '.3f')} | {_over(before)} / {_over(after)} | "
        + (f"{_f(tanchor, '.2f')} ({_f(ta / tanchor if ta and tanchor else None, '.2f')})" if anchor else "–")
        + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="folder of images (PNG photos become JPEG q95 uploads)")
    parser.add_argument("--base", help="git revision of the 'before' engine (default: where this branch left main)")
    parser.add_argument("--big", action="store_true", help="add the 12 MP mosaic")
    parser.add_argument("--only-big", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos and graphics")
    parser.add_argument("--mid", type=int, default=0, help="add N 1600x1200 photo mosaics")
    parser.add_argument("--formats", help="only these output formats (a comma list: webp,jpeg)")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--report", help="only re-print the table of a lean-*.jsonl file")
    args = parser.parse_args(argv)
    if args.report:
        rows = [json.loads(line) for line in open(args.report)]
        print(report(rows, f"(re-printed from {args.report})"))
        return
    if not args.corpus:
        parser.error("--corpus is required (or --report FILE)")
    items = corpus.load(args.corpus, big=args.big or args.only_big)
    if args.only_big:
        items = [i for i in items if i.get("big")]
    elif args.limit:
        items = [i for i in items if i["kind"] == "photo" and not i.get("big")][:args.limit] \
            + [i for i in items if i["kind"] == "graphic"][:args.limit] + [i for i in items if i.get("big")]
    if args.mid:
        items += mid_photos(args.corpus, args.mid)
    items.sort(key=lambda i: not i.get("big"))   # the 12 MP mosaic first: the longest jobs
    if args.base is None:
        args.base = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                   capture_output=True, text=True).stdout.strip()[:10]
    os.makedirs(args.out, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path = pathlib.Path(args.out) / f"lean-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as base_dir, open(path, "w") as out:
        engines = [("before", Engine(extract(args.base, base_dir))), ("after", Engine(ROOT))]
        try:
            formats = set(args.formats.split(",")) if args.formats else None
            rows = run(items, engines, lambda line: print(line, file=sys.stderr, flush=True), out, formats)
        finally:
            for _, engine in engines:
                engine.close()
    load = os.getloadavg()
    header = (f"Run {started}, {os.cpu_count()} cores, load average at the end {load[0]:.1f} / {load[1]:.1f} / "
              f"{load[2]:.1f}; before = `{args.base}`, after = this checkout; raw rows in {path}.")
    print(report(rows, header))


if __name__ == "__main__":
    main()
