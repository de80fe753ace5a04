"""python -m bench --corpus DIR [--big]: engine vs anchors, one run, one table."""

import argparse
import datetime
import io
import json
import os
import pathlib
import platform
import statistics
import time

from PIL import Image

from imgsmaller import engine
from imgsmaller.errors import ServiceError

from . import anchors, corpus, metrics

KB = 1024
TARGETS = {"20KB": 20 * KB, "50KB": 50 * KB, "100KB": 100 * KB, "10%": None}
PHOTO_FORMATS = ("jpeg", "webp", "avif")
MAX_PIXELS = 50_000_000


def lossless_png(image):
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


VARIANTS = {
    # Each optional wheel switched off, to show what it adds.
    "pillow-only": ("pyjpegli", "mozjpeg", "imagequant", "oxipng"),
    "no-jpegli": ("pyjpegli",),
    "no-mozjpeg": ("mozjpeg",),
    "no-imagequant": ("imagequant",),
    "no-oxipng": ("oxipng",),
}


def use_variant(name):
    from imgsmaller.engine import encoders
    for module in VARIANTS[name]:
        setattr(encoders, module, None)


def ours(data, fmt, target):
    start = time.perf_counter()
    try:
        result = engine.compress(data, output=fmt, target_size=target, max_pixels=MAX_PIXELS)
    except ServiceError as error:
        return None, 0, time.perf_counter() - start, {"error": error.message}
    return result.data, result.encodes, time.perf_counter() - start, {
        "width": result.width, "height": result.height, "settings": result.settings, "score": result.quality_score}


def run(items, formats, targets, out, log, engine_label="ImgSmaller", anchors_on=True, graphic_formats=("png", "webp")):
    tools = anchors.available()
    log(f"anchors installed: {tools}")
    for item in items:
        ref = metrics.reference(item["data"])
        judge = metrics.Judge(ref)
        work = anchors.Work(item["data"], item["format"], lossless_png(ref))
        jobs = []
        kind_formats = formats if item["kind"] == "photo" else [f for f in ("png", "webp") if f in graphic_formats]
        for fmt in kind_formats:
            for label, target in targets.items():
                if label == "10%":
                    target = len(item["data"]) // 10
                jobs.append((fmt, label, target))
            jobs.append((fmt, "auto", None))
        if item["kind"] == "graphic" and tools["pngquant"] and "png" in kind_formats:
            pq = anchors.pngquant_default(work)[0]
            jobs.append(("png", "pngquant size", len(pq)))
        for fmt, label, target in jobs:
            runners = [(engine_label, lambda w, t, fmt=fmt, data=item["data"]: ours(data, fmt, t))]
            table = anchors.AUTO_ANCHORS if target is None else anchors.TARGET_ANCHORS
            if label == "pngquant size":
                table = {"png": [("pngquant+oxipng", "pngquant", anchors.pngquant_default)]}
            for name, binary, fn in table.get(fmt, []) if anchors_on else []:
                if tools.get(binary):
                    runners.append((name, fn))
            for name, fn in runners:
                try:
                    got = fn(work, target)
                except Exception as error:  # an anchor that fails is recorded, not fatal
                    got = (None, 0, 0.0, {"error": repr(error)[:200]})
                data, encodes, seconds = got[:3]
                extra = got[3] if len(got) > 3 else {}
                row = {"image": item["name"], "kind": item["kind"], "big": item.get("big", False),
                       "format": fmt, "target_label": label, "target": target, "tool": name,
                       "input_bytes": len(item["data"]), "pixels": ref.width * ref.height,
                       "bytes": len(data) if data else None, "encodes": encodes, "seconds": round(seconds, 3)}
                if data:
                    row["ssimulacra2"], row["ssim"] = (round(v, 4) for v in judge.scores(data))
                row.update({k: v for k, v in extra.items() if k != "score"})
                out.write(json.dumps(row) + "\n")
                out.flush()
                log(f"{item['name']:<22} {fmt:<4} {label:<13} {name:<28} "
                    f"{row['bytes']} {row.get('ssimulacra2')} {row['seconds']}s {row.get('error', '')}")
        work.close()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def proxy_note(rows):
    """Cheap predictor encodes (proxy mosaic, raw jpegli) besides the real ones."""
    extra = [r.get("settings", {}).get("proxy_encodes", 0) for r in rows]
    return f" (+{median(extra):.0f} cheap)" if any(extra) else ""


def report(rows, machine):
    lines = [f"Run {machine['date']} on {machine['machine']}.", ""]
    groups = {}
    for row in rows:
        key = (row["big"], row["format"], row["target_label"], row["tool"])
        groups.setdefault(key, []).append(row)
    order = ["20KB", "50KB", "100KB", "10%", "pngquant size", "auto"]
    for big in (False, True):
        for kind_fmt in ("jpeg", "webp", "avif", "png"):
            keys = sorted((k for k in groups if k[0] == big and k[1] == kind_fmt),
                          key=lambda k: (order.index(k[2]), not k[3].startswith("ImgSmaller"), k[3]))
            if not keys:
                continue
            title = f"### {kind_fmt.upper()}" + (" — 12 MP mosaic" if big else "")
            lines += [title, "",
                      "| target | tool | n | median bytes/target | … where binding | worst | over target"
                      " | median SSIMULACRA2 | worst-decile SSIMULACRA2 | median SSIM | encodes | median time |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for key in keys:
                rs = groups[key]
                ok = [r for r in rs if r["bytes"]]
                if key[2] == "auto":
                    ratio = [r["bytes"] / r["input_bytes"] for r in ok]
                    bt, worst, over = median(ratio), max(ratio, default=None), sum(r > 1 for r in ratio)
                else:
                    ratio = [r["bytes"] / r["target"] for r in ok]
                    bt, worst, over = median(ratio), max(ratio, default=None), sum(r > 1 for r in ratio)
                # "Binding": the engine had to give something up (not lossless, not top quality).
                binding = [r["bytes"] / r["target"] for r in ok if key[2] != "auto" and "settings" in r
                           and not r["settings"].get("lossless") and r["settings"].get("quality", 100) < 100]
                s2 = sorted(r["ssimulacra2"] for r in ok)
                decile = s2[max(0, len(s2) // 10 - 1)] if len(s2) >= 10 else (s2[0] if s2 else None)
                failed = len(rs) - len(ok)
                lines.append(
                    f"| {key[2]}{' (bytes/input)' if key[2] == 'auto' else ''} | {key[3]} | {len(rs)}"
                    f"{f' ({failed} failed)' if failed else ''} | {fmt(bt, '.3f')} | "
                    f"{fmt(median(binding), '.3f') + f' ({len(binding)})' if binding else '–'} | "
                    f"{fmt(worst, '.3f')} | {over} | "
                    f"{fmt(median([r['ssimulacra2'] for r in ok]), '.1f')} | {fmt(decile, '.1f')} | "
                    f"{fmt(median([r['ssim'] for r in ok]), '.4f')} | {fmt(median([r['encodes'] for r in ok]), '.0f')}"
                    f"{proxy_note(ok)} | "
                    f"{fmt(median([r['seconds'] for r in rs]), '.2f')} s |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--corpus", help="folder of images (PNG photos become JPEG q95 uploads)")
    parser.add_argument("--big", action="store_true", help="add a 12 MP photo mosaic made from the corpus")
    parser.add_argument("--only-big", action="store_true", help="run only the 12 MP mosaic")
    parser.add_argument("--formats", default=",".join(PHOTO_FORMATS), help="photo output formats")
    parser.add_argument("--targets", default=",".join(TARGETS), help="subset of 20KB,50KB,100KB,10%%")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    parser.add_argument("--out", default="bench/out", help="where results-*.jsonl and table.md go")
    parser.add_argument("--graphic-formats", default="png,webp", help="output formats for graphics")
    parser.add_argument("--kinds", default="photo,graphic", help="which images: photo, graphic or both")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="run the engine with optional wheels off "
                        "(no anchors), to measure what each adds")
    parser.add_argument("--report", nargs="+", help="only re-print the table of existing results .jsonl files")
    args = parser.parse_args(argv)
    if not args.report and not args.corpus:
        parser.error("--corpus is required (or --report FILE...)")
    machine = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                          f"Pillow {Image.__version__}"}
    os.makedirs(args.out, exist_ok=True)
    if args.report:
        rows = [json.loads(line) for path in args.report for line in open(path)]
    else:
        items = corpus.load(args.corpus, big=args.big or args.only_big)
        if args.only_big:
            items = [i for i in items if i.get("big")]
        items = [i for i in items if i["kind"] in args.kinds.split(",")]
        if args.limit:
            items = items[: args.limit] + [i for i in items[args.limit:] if i.get("big")]
        targets = {k: v for k, v in TARGETS.items() if k in args.targets.split(",")}
        path = pathlib.Path(args.out) / f"results-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        label = "ImgSmaller"
        if args.variant:
            use_variant(args.variant)
            label = f"ImgSmaller ({args.variant})"
        with open(path, "w") as out:
            run(items, args.formats.split(","), targets, out, lambda m: print(m, flush=True), engine_label=label,
                anchors_on=not args.variant, graphic_formats=args.graphic_formats.split(","))
        rows = [json.loads(line) for line in open(path)]
        print(f"results: {path}")
    table = report(rows, machine)
    (pathlib.Path(args.out) / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
