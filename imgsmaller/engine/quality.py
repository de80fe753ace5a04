"""A result's quality_score: decode an output, score it against the original. No Flask, no SQL; only score
and allocator."""

import io

import cv2
import numpy as np
from PIL import Image

from .allocator import trim_heap
from .score import Scorer, tiles


def decode(data):
    """An encoded output back to RGB(A) pixels, for scoring."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        decoded = _decode_webp(data)
        if decoded is not None:
            return decoded
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB"
        if im.mode != mode:
            return im.convert(mode)
        # The pixels alone, without the file object and decoder behind them (WebP's keeps its
        # canvas and a copy of the frame: 8 more bytes a pixel). convert() would copy them: a
        # whole image more at the job's peak (46 MiB at 12 MP, measured by bench/memory.py).
        return im._new(im.im)


def _decode_webp(data):
    """A WebP output through the libwebp decoder Pillow's plugin wraps, the same pixels with less memory:
    the plugin keeps the decoder (its two canvases) and a copy of the frame while it builds the image;
    here the decoder goes first and the image is made on the frame's own bytes. Peak at 12 MP: 140
    instead of 186 MiB (bench/memory.py's WebP jobs peak while scoring). None where this Pillow's
    module differs (then the plugin decodes it)."""
    try:
        from PIL import _webp

        decoder = _webp.WebPAnimDecoder(data)
        size, rawmode = decoder.get_info()[0], decoder.get_info()[4]
        frame = decoder.get_next()[0]
    except (ImportError, AttributeError, TypeError, IndexError):
        return None
    del decoder
    if rawmode == "RGBA":
        return Image.frombuffer("RGBA", size, frame, "raw", "RGBA", 0, 1)
    if rawmode != "RGBX":
        return None
    return Image.frombuffer("RGBX", size, frame, "raw", "RGBX", 0, 1).convert("RGB")


def pixels(data):
    """An output decoded for Scorer.score: decode(data), or for WebP a uint8 RGB(A) array from OpenCV's
    libwebp, which decodes into the array alone (12 MP: 70 MiB at the peak, the plugin's path 140; the same
    pixels, tests/test_quality.py)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is not None and array.ndim == 3 and array.shape[2] in (3, 4):
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA, dst=array)
    return decode(data)


class LazyScorer:
    """A Scorer whose references (~20 MiB) are built at the first score, and dropped by release() while a
    full-size encode, a job's peak, runs (12 MP: libwebp 100 MiB, oxipng 89, mozjpeg 47). A decoded output
    is cut to its tiles before they are built (proxy_pixels needs none of them)."""

    proxy_pixels = Scorer.proxy_pixels

    def __init__(self, image):
        self.image, self.built = image, None
        self.size, self.boxes, self.alpha = image.size, tiles(*image.size), image.mode == "RGBA"

    def build_from(self, pixels):
        """The references built now, from the picture's pixels as a uint8 array (its picture may be parked)."""
        self.built = Scorer(pixels)

    def release(self):
        self.built = None
        trim_heap()

    def __getattr__(self, name):   # the rest of Scorer's attributes
        if self.built is None:
            self.built = Scorer(self.image)
        return getattr(self.built, name)


def score_file(scorer, data):
    """The scorer's score of an encoded output of its original's size; the decoded picture is freed
    before the metric's float work (a whole picture less at the peak: 46 MiB at 12 MP)."""
    cut = scorer.proxy_pixels(pixels(data))
    return scorer.score_tiles(cut)


def score_result(image, out):
    """SSIMULACRA2 of the output (upscaled back if it was downscaled) against the original."""
    decoded = pixels(out)
    scorer = LazyScorer(image)
    if isinstance(decoded, np.ndarray):
        if decoded.shape[1::-1] == image.size:
            cut, decoded = scorer.proxy_pixels(decoded), None
            return scorer.score_tiles(cut)
        decoded = Image.fromarray(decoded)
    if decoded.size != image.size:
        return scorer.score_upscaled(decoded)
    cut, decoded = scorer.proxy_pixels(decoded), None
    return scorer.score_tiles(cut)
