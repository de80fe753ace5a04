"""Fuzz the engine: mutate real JPEG/PNG/WebP/AVIF/HEIC seeds and run them through probe and compress.

    python -m bench.fuzz --cases 20000 [--format png] [--seed 1] [--max-seconds 3000]

Each case is one seed (encoded here with Pillow and pillow-heif, plus the AVIF reproducers in tests/data)
with 1-3 mutations — bit flips, byte stomps, truncation, chunk/box splicing (within a file
and across formats), dimension patches (PNG IHDR, JPEG SOF, WebP VP8/VP8L/VP8X, AVIF and HEIC ispe)
and cross-format grafts — then `engine.probe` and, when it passes, `engine.compress` with a
random output and target. It prints, per format: cases, refused (a ServiceError: the
designed answer), compressed, exceptions outside the error family, crashes of the
worker process (native code), hangs (a case over
HANG_S, or killed at KILL_S), and results over their target. A case runs in a worker
process, so a hang is killed instead of stopping the run; a bad case is saved to --out.

The mutators take a `Source` of choices, so tests/test_fuzz.py drives the same code with
Hypothesis (which then shrinks a failure) while this script uses `random.Random`.
"""

import argparse
import io
import multiprocessing
import pathlib
import random
import struct
import sys
import time
import traceback
import zlib

FORMATS = ("jpeg", "png", "webp", "avif", "heic")
OUTPUTS = ("original", "jpeg", "png", "webp", "avif")
# Small enough that a patched header cannot make one case slow, large enough that a
# 16384x16 image (past WebP's side limit) still fits.
MAX_PIXELS = 1 << 18
HANG_S = 10.0
KILL_S = 60.0
DIMENSIONS = (0, 1, 2, 3, 15, 16, 17, 255, 256, 1000, 16383, 16384, 16385, 32768, 32769,
              65500, 65535, 65536, 2**24 - 1, 2**31 - 1, 2**32 - 1)
DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"


class RandomSource:
    """Choices from a seeded random.Random (the long run)."""

    def __init__(self, seed):
        self._random = random.Random(seed)

    def int(self, low, high):
        return self._random.randint(low, high)


def choice(source, items):
    return items[source.int(0, len(items) - 1)]


# -- seeds ---------------------------------------------------------------------------


def _picture(width, height, mode, seed):
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 9 + rng.randint(0, 40)) % 256, (y * 7) % 256, (x * y + rng.randint(0, 60)) % 256)
                   for y in range(height) for x in range(width)])
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def _save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt.upper(), **options)
    return buffer.getvalue()


def _heic(image, *images, **options):
    """A HEIC made with pillow-heif's x265 encoder; more `images` make a multi-image file."""
    import pillow_heif

    heif = pillow_heif.from_pillow(image)
    for other in images:
        heif.add_from_pillow(other)
    buffer = io.BytesIO()
    heif.save(buffer, quality=options.pop("quality", 60), **options)
    return buffer.getvalue()


def _heic_10bit(image):
    import numpy as np
    import pillow_heif

    pixels = np.asarray(image.convert("RGB")).astype(np.uint16) * 257
    buffer = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=image.size, data=pixels.tobytes()).save(buffer, quality=60)
    return buffer.getvalue()


def make_seeds(reproducers=True, heic=True):
    """{format: [bytes]}: small, varied files of each format (a few hundred bytes to a few KB).

    With `reproducers`, the AVIFs of tests/data (inputs that once broke the decoder) are seeds too;
    with `heic`, HEIC seeds (pillow-heif's x265 encoder) are made too.
    """
    rgb, rgba = _picture(24, 16, "RGB", 1), _picture(20, 14, "RGBA", 2)
    grey, palette = _picture(17, 9, "L", 3), _picture(16, 16, "P", 4)
    frames = [_picture(12, 10, "RGB", 5 + i) for i in range(3)]
    seeds = {
        "jpeg": [_save(rgb, "jpeg", quality=80), _save(grey, "jpeg"), _save(rgb, "jpeg", progressive=True),
                 _save(rgb.convert("CMYK"), "jpeg"), _save(rgb, "jpeg", subsampling=0, exif=_exif())],
        "png": [_save(rgb, "png"), _save(rgba, "png"), _save(grey, "png"), _save(palette, "png"),
                _save(rgb.convert("I;16"), "png"),
                _save(frames[0], "png", save_all=True, append_images=frames[1:], duration=50)],
        "webp": [_save(rgb, "webp", quality=70), _save(rgba, "webp"), _save(rgb, "webp", lossless=True),
                 _save(frames[0], "webp", save_all=True, append_images=frames[1:], duration=50)],
        "avif": [_save(rgb, "avif", speed=10), _save(rgba, "avif", speed=10),
                 _save(frames[0], "avif", save_all=True, append_images=frames[1:], duration=50, speed=10)],
    }
    if heic:
        seeds["heic"] = [_heic(rgb), _heic(rgba), _heic(rgb, exif=_exif()), _heic_10bit(rgb),
                         _heic(*frames, primary_index=1), _heic(_picture(80, 40, "RGB", 6), tile_size=32)]
    if reproducers:
        seeds["avif"] += [path.read_bytes() for path in sorted(DATA.glob("*.avif"))]
    return seeds


def _exif():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exercises the orientation path
    return exif.tobytes()


# -- the structure of each format: (start, end) spans of its chunks ------------------


def chunks(data):
    """Spans of the file's chunks, segments or boxes (top level, plus the meta box's children)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_chunks(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_segments(data)
    if data[:4] == b"RIFF":
        return _sized(data, 12, lambda at: struct.unpack_from("<I", data, at + 4)[0] + 8, pad=True)
    return _boxes(data)


def _png_chunks(data):
    return _sized(data, 8, lambda at: struct.unpack_from(">I", data, at)[0] + 12)


def _sized(data, at, length_at, pad=False):
    spans = []
    while at + 8 <= len(data) and len(spans) < 200:
        length = length_at(at)
        end = min(len(data), at + length + (length & 1 if pad else 0))
        spans.append((at, end))
        if end <= at:
            break
        at = end
    return spans


def _jpeg_segments(data):
    spans, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF and len(spans) < 200:
        marker = data[at + 1]
        length = struct.unpack_from(">H", data, at + 2)[0]
        spans.append((at, min(len(data), at + 2 + length)))
        if marker == 0xDA:  # start of scan: the entropy-coded data up to EOI is one span
            spans.append((at + 2 + length, max(at + 2 + length, len(data) - 2)))
            break
        at += 2 + length
    return spans


def _boxes(data, at=0, end=None, depth=0):
    end = len(data) if end is None else end
    spans = []
    while at + 8 <= end and len(spans) < 200:
        size = struct.unpack_from(">I", data, at)[0]
        kind = data[at + 4:at + 8]
        size = end - at if size == 0 else size
        if size < 8:
            break
        spans.append((at, min(end, at + size)))
        if kind in (b"meta", b"iprp", b"ipco", b"moov", b"trak") and depth < 3:
            inner = at + 12 if kind == b"meta" else at + 8
            spans += _boxes(data, inner, min(end, at + size), depth + 1)
        at += size
    return spans


# -- mutations -----------------------------------------------------------------------


def bit_flips(source, data, seeds):
    data = bytearray(data)
    for _ in range(source.int(1, 8)):
        at = source.int(0, len(data) - 1)
        data[at] ^= 1 << source.int(0, 7)
    return bytes(data)


def stomp(source, data, seeds):
    """Overwrite a short run with one interesting byte value."""
    at = source.int(0, len(data) - 1)
    run = source.int(1, 16)
    value = choice(source, (0x00, 0xFF, 0x7F, 0x80, 0x01, source.int(0, 255)))
    return data[:at] + bytes([value]) * run + data[at + run:]


def truncate(source, data, seeds):
    return data[:source.int(0, len(data) - 1)]


def splice(source, data, seeds):
    """Delete, duplicate or swap chunks, or graft in a chunk of another seed (any format)."""
    spans = chunks(data)
    if not spans:
        return truncate(source, data, seeds)
    start, end = choice(source, spans)
    action = source.int(0, 3)
    if action == 0:
        return data[:start] + data[end:]
    if action == 1:
        return data[:end] + data[start:end] + data[end:]
    if action == 2:
        other_start, other_end = choice(source, spans)
        if other_start > start:
            start, end, other_start, other_end = other_start, other_end, start, end
        if other_end > start:
            return data
        return (data[:other_start] + data[start:end] + data[other_end:start]
                + data[other_start:other_end] + data[end:])
    donor = choice(source, choice(source, list(seeds.values())))
    donor_spans = chunks(donor) or [(0, len(donor))]
    donor_start, donor_end = choice(source, donor_spans)
    return data[:start] + donor[donor_start:donor_end] + data[start:]


def patch_dimensions(source, data, seeds):
    """Rewrite the width and height the header claims (PNG IHDR, JPEG SOF, WebP, AVIF and HEIC ispe)."""
    width, height = _dimension(source), _dimension(source)
    data = bytearray(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        struct.pack_into(">II", data, 16, width, height)
        if source.int(0, 3):  # usually with a fixed CRC, so the decoder gets past it
            struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    elif data[:2] == b"\xff\xd8":
        for start, _end in _jpeg_segments(bytes(data)):
            if start + 9 <= len(data) and data[start + 1] in (0xC0, 0xC1, 0xC2):
                struct.pack_into(">HH", data, start + 5, height & 0xFFFF, width & 0xFFFF)
    elif data[:4] == b"RIFF":
        _patch_webp(data, width, height)
    else:
        at = data.find(b"ispe")
        if at >= 0 and at + 16 <= len(data):
            struct.pack_into(">II", data, at + 8, width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    return bytes(data)


def _dimension(source):
    return choice(source, DIMENSIONS) if source.int(0, 2) else source.int(0, 70000)


def _patch_webp(data, width, height):
    for start, end in chunks(bytes(data)):
        kind = bytes(data[start:start + 4])
        if kind == b"VP8X" and start + 18 <= end:
            w, h = (max(width, 1) - 1) & 0xFFFFFF, (max(height, 1) - 1) & 0xFFFFFF
            data[start + 12:start + 15] = w.to_bytes(3, "little")
            data[start + 15:start + 18] = h.to_bytes(3, "little")
        elif kind == b"VP8 " and start + 18 <= end:
            struct.pack_into("<HH", data, start + 14, width & 0x3FFF, height & 0x3FFF)
        elif kind == b"VP8L" and start + 13 <= end:
            bits = struct.unpack_from("<I", data, start + 9)[0] & 0xF0000000
            bits |= ((max(width, 1) - 1) & 0x3FFF) | (((max(height, 1) - 1) & 0x3FFF) << 14)
            struct.pack_into("<I", data, start + 9, bits)


def cross_format(source, data, seeds):
    """Another format's header on this body, or this header on another format's body."""
    donor = choice(source, choice(source, list(seeds.values())))
    cut, donor_cut = source.int(0, len(data)), source.int(0, len(donor))
    return donor[:donor_cut] + data[cut:] if source.int(0, 1) else data[:cut] + donor[donor_cut:]


MUTATIONS = (bit_flips, stomp, truncate, splice, splice, patch_dimensions, patch_dimensions, cross_format)


def mutate(source, data, seeds):
    for _ in range(source.int(1, 3)):
        if len(data) < 2:
            break
        data = choice(source, MUTATIONS)(source, data, seeds)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and source.int(0, 1):
        data = fix_png_crcs(data)  # past the CRC check, into the decoder
    return data


def fix_png_crcs(data):
    data = bytearray(data)
    for start, end in _png_chunks(bytes(data)):
        if end - start >= 12 and end == start + struct.unpack_from(">I", data, start)[0] + 12:
            struct.pack_into(">I", data, end - 4, zlib.crc32(bytes(data[start + 4:end - 4])))
    return bytes(data)


# -- one case ------------------------------------------------------------------------


def make_case(source, seeds, fmt):
    """(mutated bytes, output, target_size or None) for one case of `fmt`."""
    data = mutate(source, choice(source, seeds[fmt]), seeds)
    output = choice(source, OUTPUTS)
    target = None if source.int(0, 2) == 0 else source.int(1, 30_000)
    return data, output, target


def run_case(data, output, target):
    """'refused', 'probe-only' or 'compressed'; raises AssertionError over target, anything else is a bug."""
    from imgsmaller import engine
    from imgsmaller.errors import ServiceError

    try:
        engine.probe(data, max_pixels=MAX_PIXELS)
    except ServiceError:
        return "refused"
    try:
        result = engine.compress(data, output=output, target_size=target, max_pixels=MAX_PIXELS)
    except ServiceError:
        return "refused"
    if target is not None and len(result.data) > target:
        raise AssertionError(f"result of {len(result.data)} bytes over its target of {target}")
    engine.probe(result.data, max_pixels=MAX_PIXELS * 4)  # the result must itself be a valid image
    return "compressed"


# -- the long run --------------------------------------------------------------------


def _worker(connection):
    seeds = make_seeds()
    while True:
        message = connection.recv()
        if message is None:
            return
        fmt, case_seed = message
        data, output, target = make_case(RandomSource(case_seed), seeds, fmt)
        started = time.perf_counter()
        try:
            outcome, detail = run_case(data, output, target), None
        except AssertionError as error:
            outcome, detail = "over-target", str(error)
        except Exception:
            outcome, detail = "exception", traceback.format_exc(limit=6)
        connection.send((outcome, time.perf_counter() - started, detail))


class Runner:
    """One worker process, restarted after a case it had to be killed for."""

    def __init__(self):
        self._start()

    def _start(self):
        self.connection, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()

    def run(self, fmt, case_seed):
        self.connection.send((fmt, case_seed))
        if not self.connection.poll(KILL_S):
            self.process.kill()
            self.process.join()
            self._start()
            return "killed", KILL_S, None
        try:
            return self.connection.recv()
        except EOFError:  # the worker died: a crash in native code
            self.process.join()
            code = self.process.exitcode
            self._start()
            return "crash", 0.0, f"worker exit code {code}"

    def close(self):
        self.connection.send(None)
        self.process.join(5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases per format")
    parser.add_argument("--format", choices=FORMATS, action="append", help="only these formats (repeatable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop each format after this long")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("fuzz-failures"))
    parser.add_argument("--case", type=int, help="write this one case's file to --out and print its options")
    args = parser.parse_args(argv)
    seeds = make_seeds()
    if args.case is not None:
        fmt = FORMATS[args.case // 1_000_000 % 10]
        _save_failure(args.out, fmt, args.case, seeds, "case", None)
        return 0
    runner = Runner()
    print(f"{'format':<6} {'cases':>7} {'refused':>8} {'compressed':>10} {'exceptions':>10} "
          f"{'crashes':>7} {'hangs>10s':>9} {'over target':>11} {'slowest s':>9} {'seconds':>8}  slowest case",
          flush=True)
    total_bad = 0
    for fmt in args.format or FORMATS:
        counts = dict.fromkeys(("refused", "compressed", "exception", "crash", "hang", "over-target"), 0)
        started, slowest, slowest_case, cases = time.perf_counter(), 0.0, None, 0
        for index in range(args.cases):
            if args.max_seconds and time.perf_counter() - started > args.max_seconds:
                break
            case_seed = args.seed * 10_000_000 + FORMATS.index(fmt) * 1_000_000 + index
            outcome, seconds, detail = runner.run(fmt, case_seed)
            cases += 1
            if seconds > slowest:
                slowest, slowest_case = seconds, case_seed
            if outcome == "killed" or seconds > HANG_S:
                counts["hang"] += 1
            if outcome != "killed":
                counts[outcome] += 1
            if outcome in ("exception", "crash", "over-target", "killed") or seconds > HANG_S:
                _save_failure(args.out, fmt, case_seed, seeds, outcome, detail)
        bad = counts["exception"] + counts["crash"] + counts["hang"] + counts["over-target"]
        total_bad += bad
        print(f"{fmt:<6} {cases:>7} {counts['refused']:>8} {counts['compressed']:>10} {counts['exception']:>10} "
              f"{counts['crash']:>7} {counts['hang']:>9} {counts['over-target']:>11} {slowest:>9.2f} "
              f"{time.perf_counter() - started:>8.0f}  {slowest_case}", flush=True)
    runner.close()
    return 1 if total_bad else 0


def _save_failure(out, fmt, case_seed, seeds, outcome, detail):
    data, output, target = make_case(RandomSource(case_seed), seeds, fmt)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{fmt}-{case_seed}.bin").write_bytes(data)
    print(f"  {outcome}: case {case_seed} ({len(data)} bytes, output={output}, target={target}) "
          f"saved to {out}/{fmt}-{case_seed}.bin\n  {(detail or '').strip()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
