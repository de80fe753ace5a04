"""python -m bench.memory --corpus DIR: peak memory of one job, per image size and output format.

Each job runs `imgsmaller.engine.compress` in a fresh Python process (the engine imported,
then the upload read, then one compress) and reports that process's peak RSS above its
idle RSS: VmHWM from /proc/self/status minus VmRSS once the engine is imported. (Not
`getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries it over from the parent at fork, so a child of
this script, which holds the 48 MP image, would report the parent's peak.) That is what a pool slot's child
adds to the machine for the job (the upload's bytes included), and what JOB_MEMORY_MB
budgets (imgsmaller/job_memory.py holds the estimate this table calibrates).

Uploads: the 12 MP mosaic of bench.corpus (4032x3024, JPEG q95) and a 48 MP one
(8064x6048: four such mosaics of different crops, 2 x 2), so detail is at every pixel.
Jobs: JPEG, WebP, PNG and AVIF, each in auto mode and at a target of 10 % of the upload.
"Decoded" is the image's 8-bit RGB size (width x height x 3 bytes), in MiB. "CPU s": the job's process time
(all its threads; the number to compare on a shared machine), "time s" its wall time.
"""

import argparse
import datetime
import io
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from PIL import Image

FORMATS = ("jpeg", "webp", "png", "avif")
MODES = ("auto", "10%")
MAX_PIXELS = 50_000_000
MIB = 1 << 20


def status_kib(field):
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(path, output, target):
    """In the fresh process: idle RSS, then one job; prints one JSON line."""
    from imgsmaller import engine
    from imgsmaller.engine.allocator import tune_for_jobs

    tune_for_jobs()   # as the service's job processes do (imgsmaller/job_process.py)
    idle = status_kib("VmRSS")
    data = pathlib.Path(path).read_bytes()
    started, cpu = time.perf_counter(), time.process_time()
    result = engine.compress(data, output=output, target_size=target, max_pixels=MAX_PIXELS)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = status_kib("VmHWM")
    print(json.dumps({"idle_kib": idle, "peak_kib": peak, "seconds": seconds, "cpu": cpu, "bytes": len(result.data),
                      "width": result.width, "height": result.height, "score": result.quality_score,
                      "encodes": result.encodes}))


def uploads(folder, sizes):
    from .corpus import jpeg_q95, mosaic

    photos = [Image.open(path).convert("RGB") for path in sorted(pathlib.Path(folder).glob("kodim*.png"))]
    items = []
    if "12" in sizes:
        items.append(("12 MP", jpeg_q95(mosaic(photos))))
    if "48" in sizes:
        canvas = Image.new("RGB", (8064, 6048))
        for k in range(4):
            canvas.paste(mosaic(photos[k * 5:] + photos[:k * 5]), ((k % 2) * 4032, (k // 2) * 3024))
        items.append(("48 MP", jpeg_q95(canvas)))
    return items


def run_job(path, output, target, timeout):
    code = f"from bench.memory import child; child({str(path)!r}, {output!r}, {target!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=pathlib.Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_header():
    return (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()}, "
            f"{platform.python_version()}, Pillow {Image.__version__}")


def written_uploads(corpus, sizes, tmp):
    """(label, upload bytes, its file in `tmp`, decoded MiB) for each size of the comma list `sizes`."""
    for label, data in uploads(corpus, sizes.split(",")):
        path = pathlib.Path(tmp) / "upload.jpg"
        path.write_bytes(data)
        with Image.open(io.BytesIO(data)) as image:
            decoded = image.width * image.height * 3 / MIB
        yield label, data, path, decoded


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder with the Kodak PNGs (kodim*.png)")
    parser.add_argument("--sizes", default="12,48", help="12, 48 or both (default)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--modes", default=",".join(MODES), help="auto and/or 10%% (a target of 10 %% of the upload)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per job before it is given up")
    parser.add_argument("--json", help="also append the raw rows to this file")
    args = parser.parse_args(argv)
    print(run_header(), flush=True)
    print("| image | upload | job | decoded MiB | peak above idle MiB | ratio | time s | CPU s | bytes | score |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, data, path, decoded in written_uploads(args.corpus, args.sizes, tmp):
            for output in args.formats.split(","):
                for mode in args.modes.split(","):
                    target = None if mode == "auto" else len(data) // 10
                    row = run_job(path, output, target, args.timeout)
                    job = f"{output} {mode}"
                    if "error" in row:
                        print(f"| {label} | {len(data) / MIB:.1f} MiB | {job} | {decoded:.1f} | failed: {row['error']}"
                              " | | | | | |", flush=True)
                        continue
                    above = (row["peak_kib"] - row["idle_kib"]) / 1024
                    print(f"| {label} | {len(data) / MIB:.1f} MiB | {job} | {decoded:.1f} | {above:.0f} | "
                          f"{above / decoded:.1f} | {row['seconds']:.1f} | {row['cpu']:.1f} | {row['bytes']} | "
                          f"{row['score']} |",
                          flush=True)
                    if args.json:
                        with open(args.json, "a") as file:
                            file.write(json.dumps({"image": label, "job": job, "decoded_mib": decoded, **row}) + "\n")


if __name__ == "__main__":
    main()
