"""The command-line tools people script today, each run the way its docs say; missing ones are skipped."""

import os
import shutil
import subprocess
import tempfile
import time

try:
    import oxipng
except ImportError:
    oxipng = None


def available():
    tools = {name: shutil.which(name) is not None for name in ("convert", "jpegoptim", "cwebp", "avifenc", "pngquant")}
    tools["oxipng"] = oxipng is not None or shutil.which("oxipng") is not None
    return tools


def _run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, timeout=600, **kw)


class Work:
    """A temp folder holding the upload and a lossless PNG of its pixels."""

    def __init__(self, data, fmt, png):
        self.dir = tempfile.mkdtemp(prefix="bench-")
        self.input = os.path.join(self.dir, "input." + ("jpg" if fmt == "jpeg" else fmt))
        with open(self.input, "wb") as f:
            f.write(data)
        self.png = os.path.join(self.dir, "pixels.png")
        with open(self.png, "wb") as f:
            f.write(png)
        self.out = os.path.join(self.dir, "out")

    def read(self, path=None):
        with open(path or self.out, "rb") as f:
            return f.read()

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(fn):
    def wrapper(*args, **kw):
        start = time.perf_counter()
        out = fn(*args, **kw)
        data, encodes = out if isinstance(out, tuple) else (out, 1)
        return data, encodes, time.perf_counter() - start
    return wrapper


# ---- byte targets ----

@timed
def convert_extent(work, target):
    """ImageMagick: libjpeg quality bisection to fit jpeg:extent."""
    _run(["convert", work.input, "-strip", "-define", f"jpeg:extent={target}", "jpg:" + work.out])
    return work.read()


@timed
def jpegoptim_size(work, target):
    """jpegoptim --size (kilobytes; it re-encodes with a quality search)."""
    proc = _run(["jpegoptim", f"--size={max(1, target // 1024)}", "--strip-all", "--stdout", work.input])
    return proc.stdout


@timed
def cwebp_size(work, target):
    """cwebp -size: libwebp's own multi-pass size targeting."""
    _run(["cwebp", "-quiet", "-metadata", "none", "-size", str(target), work.png, "-o", work.out])
    return work.read()


@timed
def avifenc_bisect(work, target):
    """avifenc has no size target: the bisection on its quantizer (0-63) people script."""
    lo, hi, best, encodes = 0, 63, None, 0  # quantizer: lower = better
    smallest = None
    while lo <= hi and encodes < 7:
        q = (lo + hi) // 2
        _run(["avifenc", "-s", "6", "-j", "2", "--min", str(q), "--max", str(q), work.png, work.out + ".avif"])
        encodes += 1
        data = work.read(work.out + ".avif")
        smallest = data if smallest is None or len(data) < len(smallest) else smallest
        if len(data) <= target:
            best, hi = data, q - 1
        else:
            lo = q + 1
    return (best or smallest), encodes


def pngquant_default(work, target=None):
    """pngquant (default quality) then oxipng -o 2: the usual PNG pipeline."""
    start = time.perf_counter()
    proc = _run(["pngquant", "--strip", "--speed", "3", "-"], input=work.read(work.input))
    data = proc.stdout
    if oxipng is not None:
        data = oxipng.optimize_from_memory(data, level=2)
    return data, 1, time.perf_counter() - start


# ---- auto (no target): the usual one-liners ----

@timed
def jpegoptim_m85(work, target=None):
    proc = _run(["jpegoptim", "-m85", "--strip-all", "--stdout", work.input])
    return proc.stdout


@timed
def cwebp_default(work, target=None):
    _run(["cwebp", "-quiet", "-metadata", "none", work.png, "-o", work.out])
    return work.read()


@timed
def avifenc_default(work, target=None):
    _run(["avifenc", "-s", "6", "-j", "2", work.png, work.out + ".avif"])
    return work.read(work.out + ".avif")


@timed
def oxipng_lossless(work, target=None):
    return oxipng.optimize_from_memory(work.read(work.input), level=2)


TARGET_ANCHORS = {
    "jpeg": [("convert -define jpeg:extent", "convert", convert_extent),
             ("jpegoptim --size", "jpegoptim", jpegoptim_size)],
    "webp": [("cwebp -size", "cwebp", cwebp_size)],
    "avif": [("avifenc q-bisection", "avifenc", avifenc_bisect)],
    "png": [],
}
AUTO_ANCHORS = {
    "jpeg": [("jpegoptim -m85", "jpegoptim", jpegoptim_m85)],
    "webp": [("cwebp (default q75)", "cwebp", cwebp_default)],
    "avif": [("avifenc (default)", "avifenc", avifenc_default)],
    "png": [("pngquant+oxipng", "pngquant", pngquant_default), ("oxipng -o2 (lossless)", "oxipng", oxipng_lossless)],
}
