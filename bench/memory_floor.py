"""python -m bench.memory_floor --corpus DIR: each codec library ALONE on the 12 MP upload, its peak memory.

The floor under bench.memory's per-job peaks: what one call of a library adds to its process,
whatever the engine around it does. Each step runs in a fresh Python process: its inputs are
made first (the upload decoded, the pixels as the library takes them, an earlier encode to
decode or repack), then VmHWM is reset (/proc/self/clear_refs) and the one call runs; the
step's peak is VmHWM minus VmRSS just before the call, so it counts the library's working
memory and its output, not the inputs it was handed. Steps (as the engine calls them at 12 MP):
Pillow's JPEG decode; pyjpegli's encode; mozjpeg's lossless repack; Pillow's WebP encode at
method 4 (the engine's at this size); libwebp's decode (Pillow's plugin path, quality.decode); Pillow's PNG encode
(compress_level 1) and oxipng at levels 0-1, from that file or from the pixels; imagequant's
quantize; Pillow's AVIF (libaom) encode at the engine's speed 9 and with the options this Pillow
offers (threads, speed, tiles). "Decoded" is width x height x 3 bytes.
"""

import argparse
import io
import json
import pathlib
import subprocess
import sys
import tempfile

from PIL import Image

from .memory import run_header, written_uploads
from .memory import status_kib as _status_kib


def _encoded(image, fmt, **params):
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _avif(**params):
    return lambda image: (lambda: _encoded(image, "AVIF", quality=60, subsampling="4:2:0", **params))


def _jpegli(image):
    import pyjpegli

    rgb = image.tobytes()
    return lambda: pyjpegli.encode(rgb, image.width, image.height, 80)


def _mozjpeg(image):
    import mozjpeg_lossless_optimization as mozjpeg
    import pyjpegli

    raw = pyjpegli.encode(image.tobytes(), image.width, image.height, 80)
    return lambda: mozjpeg.optimize(raw, mozjpeg.COPY_MARKERS.NONE)


def _webp_decode(image):
    from imgsmaller.engine.quality import decode

    data = _encoded(image, "WEBP", quality=80, method=4)
    return lambda: decode(data)


def _webp_pixels(image):
    from imgsmaller.engine.quality import pixels

    data = _encoded(image, "WEBP", quality=80, method=4)
    return lambda: pixels(data)


def _oxipng(level):
    def prepare(image):
        import oxipng

        data = _encoded(image, "PNG", compress_level=1)
        return lambda: oxipng.optimize_from_memory(data, level=level, optimize_alpha=True, timeout=4.0)
    return prepare


def _oxipng_palette(level):
    def prepare(image):
        import oxipng

        data = _encoded(image.quantize(256, method=Image.Quantize.MEDIANCUT), "PNG", compress_level=1)
        return lambda: oxipng.optimize_from_memory(data, level=level, timeout=4.0)
    return prepare


def _oxipng_raw(image):
    import oxipng

    raw = bytes(image.tobytes())
    return lambda: oxipng.RawImage(raw, image.width, image.height, color_type=oxipng.ColorType.rgb(),
                                   bit_depth=8).create_optimized_png(level=0, optimize_alpha=True, timeout=4.0)


def _imagequant(image):
    import imagequant

    rgba = image.convert("RGBA").tobytes()
    return lambda: imagequant.quantize_raw_rgba_bytes(rgba, image.width, image.height, dithering_level=1.0,
                                                      max_colors=256, min_quality=0, max_quality=50)


def _jpeg_decode(image, upload):
    def decode():
        with Image.open(io.BytesIO(upload)) as im:
            im.load()
            return im._new(im.im)
    return decode


# name -> prepare(image[, upload]) -> the call to measure
STEPS = {
    "Pillow JPEG decode (the upload)": _jpeg_decode,
    "pyjpegli encode q80 (from tobytes)": _jpegli,
    "mozjpeg lossless repack": _mozjpeg,
    "Pillow WebP encode q80 method 4": lambda image: (lambda: _encoded(image, "WEBP", quality=80, method=4)),
    "Pillow WebP encode q80 method 6": lambda image: (lambda: _encoded(image, "WEBP", quality=80, method=6)),
    "libwebp decode (quality.decode: Pillow's plugin)": _webp_decode,
    "libwebp decode (quality.pixels: OpenCV's)": _webp_pixels,
    "Pillow PNG encode compress_level 1": lambda image: (lambda: _encoded(image, "PNG", compress_level=1)),
    "oxipng level 0 (truecolour)": _oxipng(0),
    "oxipng level 1 (truecolour)": _oxipng(1),
    "oxipng level 1 (palette)": _oxipng_palette(1),
    "oxipng level 0 from the pixels (RawImage, as png_bytes)": _oxipng_raw,
    "imagequant quantize q50 (from RGBA bytes)": _imagequant,
    "Pillow RGB -> RGBA + tobytes (imagequant's input)": lambda image: (lambda: image.convert("RGBA").tobytes()),
    "Pillow Lanczos resize to 1/2": lambda image: (lambda: image.resize((image.width // 2, image.height // 2),
                                                                       Image.Resampling.LANCZOS, reducing_gap=3.0)),
    "AVIF libaom speed 9 (the engine's)": _avif(speed=9),
    "AVIF libaom speed 9, max_threads 1": _avif(speed=9, max_threads=1),
    "AVIF libaom speed 6": _avif(speed=6),
    "AVIF libaom speed 9, autotiling off": _avif(speed=9, autotiling=False),
    "AVIF libaom speed 9, 4x4 tiles": _avif(speed=9, tile_rows=2, tile_cols=2),
    "AVIF libaom speed 9, row-mt 0": _avif(speed=9, advanced={"row-mt": "0"}),
    "AVIF libaom speed 9, 4:4:4": lambda image: (lambda: _encoded(image, "AVIF", quality=60, speed=9,
                                                                  subsampling="4:4:4")),
}


def child(path, name):
    """In the fresh process: the step's inputs, then the reset, then the call; prints one JSON line."""
    upload = pathlib.Path(path).read_bytes()
    with Image.open(io.BytesIO(upload)) as im:
        image = im.convert("RGB")
    prepare = STEPS[name]
    call = prepare(image, upload) if prepare is _jpeg_decode else prepare(image)
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")
    before = _status_kib("VmRSS")
    out = call()
    peak = _status_kib("VmHWM")
    size = len(out) if isinstance(out, bytes) else len(out[0]) if isinstance(out, tuple) else None
    print(json.dumps({"peak_kib": peak - before, "bytes": size}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder with the Kodak PNGs (kodim*.png)")
    parser.add_argument("--sizes", default="12", help="12, 48 or both")
    parser.add_argument("--only", help="run only the steps whose name contains this")
    args = parser.parse_args(argv)
    print(run_header(), flush=True)
    print("| image | step | decoded MiB | peak above its inputs MiB | × decoded |")
    print("|---|---|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, _, path, decoded in written_uploads(args.corpus, args.sizes, tmp):
            for name in STEPS:
                if args.only and args.only not in name:
                    continue
                code = f"from bench.memory_floor import child; child({str(path)!r}, {name!r})"
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      cwd=pathlib.Path(__file__).resolve().parent.parent)
                if done.returncode != 0:
                    print(f"| {label} | {name} | {decoded:.1f} | failed: {done.stderr.strip()[-200:]} | |", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                mib = row["peak_kib"] / 1024
                print(f"| {label} | {name} | {decoded:.1f} | {mib:.0f} | {mib / decoded:.1f} |", flush=True)


if __name__ == "__main__":
    main()
