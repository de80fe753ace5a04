"""Per-format encoders: a prepared PIL image + one quality knob in, file bytes out.

No Flask, no SQL, no other engine module.

Pillow (libjpeg-turbo, libwebp, libavif/aom, zlib) is always there. Optional wheels improve the result when
installed and are skipped when they are not (or fail to load): pyjpegli (jpegli), mozjpeg-lossless-optimization
(mozjpeg's lossless re-packing), imagequant (libimagequant palettes) and pyoxipng. Each encoder strips all
metadata except the ICC profile. The PNG encoder is in png_encoder.py.
"""

import io
import logging

log = logging.getLogger(__name__)


def _optional(name):
    try:
        return __import__(name)
    except Exception as error:  # ImportError, or a wheel whose native part fails to load
        log.info("optional encoder package %s unavailable: %s", name, error)
        return None


pyjpegli = _optional("pyjpegli")
mozjpeg = _optional("mozjpeg_lossless_optimization")
imagequant = _optional("imagequant")
oxipng = _optional("oxipng")

# WebP method 6 is 1-2 SSIMULACRA2 points better than 4 but much slower with
# alpha: measured here, 256x256 RGBA 1.98 s at m6 vs 0.08 s at m5, 2 MP RGBA
# 4.9 s vs 0.9 s (m5) vs 0.43 s (m4); RGB 2 MP 0.50 s at m6 vs 0.53 at m4.
WEBP_METHOD6_MAX_PIXELS = 1_500_000
WEBP_METHOD5_ALPHA_MAX_PIXELS = 600_000
# Auto's trials run at method 4 (scores within ~0.5 of method 6 at the same quality
# on Kodak, a third of the time); the result is encoded at the real method and scored.
WEBP_SCOUT_METHOD = 4
# The target search predicts sizes with method 2 (3-16 % larger than method 6, 2-5x
# faster; each real encode re-calibrates the ratio).
WEBP_PREDICTOR_METHOD = 2
# AVIF (aom) speed by image size, from `python -m bench.avifspeed` on this
# 2-core machine (bytes at equal SSIMULACRA2, relative to speed 6; time):
#   speed 6: x1.00, 1.40 s/MP   7: x1.03, 0.88 s/MP   8: x1.06-1.10, 0.56 s/MP
#   speed 9: x1.16-1.17, 0.17 s/MP (10 is the same as 9 here).
# Speed 6 while an encode stays under ~2 s; 9 for big photos so that a 12 MP
# job fits in ~3 s (a proxy search plus one or two full-size encodes).
AVIF_SPEEDS = ((1_300_000, 6), (4_000_000, 8))
AVIF_SPEED_BIG = 9
# log(size) of jpegli's raw file at q = 20, 23, ..., 98 less that at q50: the median of the corpus's
# photos (768x512 and 1600x1200; the slope is 0.01 per quality at q30-50, 0.08 at q95).
JPEGLI_LOG_SIZE_CURVE = (-0.398, -0.310, -0.246, -0.201, -0.166, -0.143, -0.119, -0.094, -0.058, -0.024, 0.0,
                         0.043, 0.077, 0.124, 0.173, 0.217, 0.263, 0.339, 0.405, 0.474, 0.549, 0.634, 0.776,
                         0.960, 1.170, 1.390, 1.659)


def by_pixels(steps, pixels, above):
    """The value of the first (limit, value) step with pixels <= limit; `above` past the last."""
    return next((value for limit, value in steps if pixels <= limit), above)


def avif_speed(pixels):
    return by_pixels(AVIF_SPEEDS, pixels, AVIF_SPEED_BIG)


# Above this many pixels an encoder packs its picture at each encode, not once (12 MP RGB: 35 MiB kept, 0.02 s).
KEEP_PACKED_MAX_PIXELS = 3_000_000


def packed(image, mode):
    """The picture's pixels packed in `mode` (RGB: 3 bytes a pixel), strip by strip: a whole-image convert() and
    tobytes() hold the copy and tobytes' chunks at once (RGBA at 12 MP: 139 MiB for 46, bench/memory_floor.py)."""
    row = image.width * len(mode)
    out = bytearray(row * image.height)
    for top in range(0, image.height, 64):
        strip = image.crop((0, top, image.width, min(image.height, top + 64))).convert(mode)
        out[top * row:(top + strip.height) * row] = strip.tobytes()
    return out


def _icc_segments(icc):
    """The ICC profile as JPEG APP2 segments (ICC.1 Annex B.4)."""
    chunk = 65519
    parts = [icc[i:i + chunk] for i in range(0, len(icc), chunk)] or [b""]
    out = []
    for n, part in enumerate(parts, 1):
        body = b"ICC_PROFILE\x00" + bytes((n, len(parts))) + part
        out.append(b"\xff\xe2" + (len(body) + 2).to_bytes(2, "big") + body)
    return b"".join(out)


def insert_icc(jpeg, icc):
    """Insert ICC APP2 segments after SOI and any JFIF/APP0 segment."""
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:pos] + _icc_segments(icc) + jpeg[pos:]


class Encoder:
    """Encodes one prepared image at integer qualities qmin..qmax (higher = bigger)."""

    format = ""
    qmin, qmax = 1, 100
    fractional = False   # whether qualities between integers mean anything

    def __init__(self, image, icc):
        self.image = image
        self.icc = icc
        self.encodes = 0
        self._kept = None   # _packed()'s copy

    def settings(self, q):
        return {"codec": self.name, "quality": q}

    def clone(self, image, **changes):
        """The same encoder, same settings (but `changes`), for another image (a search proxy)."""
        return type(self)(image, self.icc, **{**self._params(), **changes})

    def _params(self):
        return {}

    def encode(self, q):
        self.encodes += 1
        return self._encode(q if self.fractional else int(q))

    def trial(self, q):
        """An encode to score: the same pixels as encode(q), maybe not yet packed (pack() finishes it)."""
        return self.encode(q)

    def pack(self, data):
        """A trial's file as encode() would have made it (a lossless step; nothing for most codecs)."""
        return data

    def scout(self):
        """An encoder whose scores at each quality are close to this one's, for a cheaper search."""
        return self

    def keep_packed(self, mode):
        """The picture's pixels packed now and kept for the next encode (the caller may then drop the picture's)."""
        self._kept = packed(self.image, mode)
        return self._kept

    def _packed(self, mode):
        """packed(self.image, mode), kept for the next encode when the picture is small (KEEP_PACKED_MAX_PIXELS)."""
        data = self._kept or packed(self.image, mode)
        self._kept = data if self.image.width * self.image.height <= KEEP_PACKED_MAX_PIXELS else None
        return data

    def _pillow(self, fmt, **params):
        buf = io.BytesIO()
        if self.icc:
            params["icc_profile"] = self.icc
        self.image.save(buf, fmt, **params)
        return buf.getvalue()


class JpegEncoder(Encoder):
    format = "jpeg"

    def __init__(self, image, icc, *, backend="jpegli", subsampling="4:2:0"):
        super().__init__(image, icc)
        if backend == "jpegli" and pyjpegli is None:
            backend = "pillow"
        self.backend = backend
        self.subsampling = subsampling if backend == "pillow" else "4:2:0"
        self.name = ("jpegli" if backend == "jpegli" else "libjpeg-turbo") + ("+mozjpeg" if mozjpeg else "")

    def settings(self, q):
        return {"codec": self.name, "quality": q, "subsampling": self.subsampling}

    def _params(self):
        return {"backend": self.backend, "subsampling": self.subsampling}

    @property
    def can_predict(self):
        """Whether encode_raw() is a cheap predictor of encode()'s size."""
        return self.backend == "jpegli" and mozjpeg is not None

    def encode_raw(self, q):
        """jpegli's file before mozjpeg's repack (~6x cheaper than encode())."""
        return pyjpegli.encode(self._packed("RGB"), self.image.width, self.image.height, int(q))

    @staticmethod
    def size_curve(q):
        """A typical log(size) of encode_raw(q), up to a constant (JPEGLI_LOG_SIZE_CURVE, linear between
        its points, the end slopes beyond them): the target search steps along it."""
        curve = JPEGLI_LOG_SIZE_CURVE
        i = min(len(curve) - 2, max(0, int((q - 20) // 3)))
        return curve[i] + (curve[i + 1] - curve[i]) * (q - (20 + 3 * i)) / 3

    def trial(self, q):
        """jpegli's raw file: the pixels of encode(q) at a sixth of its cost; pack() repacks it."""
        if not self.can_predict:
            return self.encode(q)
        self.encodes += 1
        return self.encode_raw(q)

    @staticmethod
    def repack_ratio(raw):
        """mozjpeg's repack of a raw file over its size, without an ICC profile (what pack() saves)."""
        return len(mozjpeg.optimize(raw, mozjpeg.COPY_MARKERS.NONE)) / len(raw)

    def pack(self, data):
        if not self.can_predict:
            return data
        data = mozjpeg.optimize(data, mozjpeg.COPY_MARKERS.NONE)
        return insert_icc(data, self.icc) if self.icc else data

    def _encode(self, q):
        if self.backend == "jpegli":
            if self.can_predict:   # jpegli + mozjpeg
                return self.pack(self.encode_raw(q))
            data = self.encode_raw(q)
            return insert_icc(data, self.icc) if self.icc else data
        if mozjpeg is not None:
            # mozjpeg's pass re-does the Huffman optimisation; skip Pillow's.
            data = self._pillow("JPEG", quality=q, subsampling=self.subsampling)
            return mozjpeg.optimize(data, mozjpeg.COPY_MARKERS.ICC)
        return self._pillow("JPEG", quality=q, subsampling=self.subsampling, optimize=True)


class WebpEncoder(Encoder):
    format = "webp"
    qmin, qmax = 0, 100
    fractional = True   # libwebp takes a float quality: 0.5 steps are ~1 % in size
    name = "libwebp"

    def __init__(self, image, icc, *, method=None):
        super().__init__(image, icc)
        if method is None:
            pixels = image.width * image.height
            if image.mode == "RGBA":
                method = 5 if pixels <= WEBP_METHOD5_ALPHA_MAX_PIXELS else 4
            else:
                method = 6 if pixels <= WEBP_METHOD6_MAX_PIXELS else 4
        self.method = method

    def settings(self, q):
        return {"codec": self.name, "quality": q, "method": self.method}

    def _params(self):
        return {"method": self.method}

    def _encode(self, q):
        return self._pillow("WEBP", quality=q, method=self.method)

    def scout(self):
        """Method 4 scores within ~0.5 of method 6 at the same quality, at a third of the time."""
        return self if self.method <= WEBP_SCOUT_METHOD else self.clone(self.image, method=WEBP_SCOUT_METHOD)

    def predictor(self, image=None):
        """A size predictor: method 2, 3-8 % larger than methods 4-6 and 2-5x faster."""
        return self.clone(self.image if image is None else image, method=WEBP_PREDICTOR_METHOD)

    def lossless(self):
        self.encodes += 1
        return self._pillow("WEBP", lossless=True, quality=80, method=4, exact=False)


class AvifEncoder(Encoder):
    format = "avif"
    qmin, qmax = 0, 100
    name = "libavif/aom"

    def __init__(self, image, icc, *, speed=None, subsampling="4:2:0"):
        super().__init__(image, icc)
        if speed is None:
            speed = avif_speed(image.width * image.height)
        self.speed = speed
        self.subsampling = subsampling

    def settings(self, q):
        return {"codec": self.name, "quality": q, "speed": self.speed, "subsampling": self.subsampling}

    def _params(self):
        return {"speed": self.speed, "subsampling": self.subsampling}

    def _encode(self, q, **metadata):
        return self._pillow("AVIF", quality=q, speed=self.speed, subsampling=self.subsampling, **metadata)

    def encode_with(self, q, *, exif=None, xmp=None):
        """The encode at `q` carrying EXIF (a TIFF block) and XMP: the same picture bytes (libavif is
        deterministic), in boxes of their own; AVIF has no place to insert them after the fact."""
        self.encodes += 1
        return self._encode(int(q), **{name: value for name, value in (("exif", exif), ("xmp", xmp)) if value})
