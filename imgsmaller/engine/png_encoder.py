"""PNG: libimagequant palettes and lossless files, packed by oxipng (its level by the job's size, a time cap).

No Flask, no SQL, no other engine module but encoders (the base class, the optional wheels, the packing).
"""

import io

from PIL import Image

from .encoders import Encoder, by_pixels, imagequant, oxipng, packed

# oxipng level for the file kept and for palette trials in a search. Level 1 trials took half the time (0.30 vs 0.54 s
# on a 2 MP screenshot) but are ~2 % larger, which pushed borderline targets into needless downscales: measured worse,
# so trials use the full level too (finish() is then a no-op).
OXIPNG_LEVEL = 2
OXIPNG_TRIAL_LEVEL = 2
# Big jobs get a lower level, so that lossless work stays within the time a person
# waits. A 12 MP photo, lossless, 2 loaded cores: level 2 17.64 MB in 32 s, level 1
# 17.66 MB in 15 s, level 0 18.74 MB in 5 s (Pillow alone: 19.29 MB in 3 s).
OXIPNG_LEVELS = ((2_500_000, OXIPNG_LEVEL), (5_000_000, 1))
OXIPNG_LEVEL_BIG = 0
# And a cap on any one oxipng run (it then keeps the best found so far).
OXIPNG_TIMEOUT_S = 4.0


def oxipng_level(pixels):
    """The oxipng level for a job of this many pixels (OXIPNG_LEVELS)."""
    return by_pixels(OXIPNG_LEVELS, pixels, OXIPNG_LEVEL_BIG)


def png_bytes(image, icc, level=OXIPNG_LEVEL):
    """Lossless PNG, as tight as the installed tools allow; RGB(A) to oxipng as pixels (12 MP: 106 MiB, not 142)."""
    if oxipng is not None and image.mode in ("RGB", "RGBA"):
        colour = oxipng.ColorType.rgba() if image.mode == "RGBA" else oxipng.ColorType.rgb()
        raw = oxipng.RawImage(packed(image, image.mode), image.width, image.height, color_type=colour,
                              bit_depth=8)
        if icc:
            raw.add_icc_profile(icc)
        return raw.create_optimized_png(level=level, optimize_alpha=True, timeout=OXIPNG_TIMEOUT_S)
    buf = io.BytesIO()
    params = {"icc_profile": icc} if icc else {}
    if oxipng is not None:   # a palette
        image.save(buf, "PNG", compress_level=1, **params)
        return oxipng.optimize_from_memory(buf.getvalue(), level=level, optimize_alpha=True,
                                           timeout=OXIPNG_TIMEOUT_S)
    image.save(buf, "PNG", optimize=True, **params)
    return buf.getvalue()


class PngEncoder(Encoder):
    """Palette PNG; quality 0-100 is libimagequant's, or a colour count without it."""

    format = "png"
    qmin, qmax = 0, 100

    def __init__(self, image, icc, *, level=None):
        super().__init__(image, icc)
        self.level = oxipng_level(image.width * image.height) if level is None else level
        self.name = "imagequant" if imagequant is not None else "pillow-quantize"
        self.name += "+oxipng" if oxipng is not None else ""
        self._last = self._same = None   # (quality, file): the last encode, and where encode() saturated

    def _params(self):
        return {"level": self.level}

    def encode(self, q):
        """At or above two qualities that gave the same file, that file without another quantize: the quality is
        libimagequant's target, and past what 256 colours can reach the file stops changing (bench/RESULTS.md)."""
        if self._same is not None and q >= self._same[0]:
            return self._same[1]
        data = super().encode(q)
        if imagequant is not None and self._last is not None and self._last[1] == data:
            self._same = (min(q, self._last[0]), data)
        self._last = (q, data)
        return data

    def lossless(self):
        self.encodes += 1
        return png_bytes(self.image, self.icc, level=self.level)

    def quantize(self, q):
        if imagequant is not None:
            # quantize_raw_rgba_bytes, not quantize_pil_image (a Python loop over every pixel: minutes at 12 MP).
            pixels, palette = imagequant.quantize_raw_rgba_bytes(
                imagequant.ffi.from_buffer(self._packed("RGBA")), self.image.width, self.image.height,
                dithering_level=1.0, max_colors=256, min_quality=0, max_quality=max(1, q))
            image = Image.frombytes("P", self.image.size, pixels)
            image.putpalette(palette, "RGBA")
            return image
        # Pillow alone: fewer colours for lower q (2..256); FASTOCTREE: the only built-in method for alpha.
        colors = max(2, min(256, int(round(2 ** (1 + 7 * q / 100)))))
        method = Image.Quantize.FASTOCTREE if self.image.mode == "RGBA" else Image.Quantize.MEDIANCUT
        return self.image.quantize(colors=colors, method=method, dither=Image.Dither.FLOYDSTEINBERG)

    def _encode(self, q):
        return png_bytes(self.quantize(q), self.icc, level=self.palette_level)

    @property
    def palette_level(self):
        """Palettes never at level 0: 6 % larger, and oxipng is a small share of a palette encode
        (3 MP, loaded: libimagequant 9.8 s, oxipng level 0 2.2 s, level 1 3.8 s, level 2 6.4 s)."""
        return min(max(self.level, 1), OXIPNG_TRIAL_LEVEL)

    def finish(self, data):
        """The kept palette file, re-packed at the full oxipng level (never larger)."""
        if oxipng is None or self.palette_level >= self.level:
            return data
        repacked = oxipng.optimize_from_memory(data, level=self.level, timeout=OXIPNG_TIMEOUT_S)
        return min(data, repacked, key=len)
