"""A result's quality_score: decode an output, score it against the original. No Flask, no SQL; only score."""

import io

from PIL import Image

from .score import Scorer


def decode(data):
    """An encoded output back to RGB(A) pixels, for scoring."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB"
        if im.mode != mode:
            return im.convert(mode)
        # The pixels alone, without the file object and decoder behind them (WebP's keeps its
        # canvas and a copy of the frame: 8 more bytes a pixel). convert() would copy them: a
        # whole image more at the job's peak (46 MiB at 12 MP, measured by bench/memory.py).
        return im._new(im.im)


def score_result(image, out):
    """SSIMULACRA2 of the output (upscaled back if it was downscaled) against the original."""
    decoded = decode(out)
    if decoded.size != image.size:
        return Scorer(image).score_upscaled(decoded)
    return Scorer(image).score(decoded)
