"""A result's quality_score: decode an output, score it against the original. No Flask, no SQL; only score."""

import io

from PIL import Image

from .score import Scorer


def decode(data):
    """An encoded output back to RGB(A) pixels, for scoring."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB")


def score_result(image, out):
    """SSIMULACRA2 of the output (upscaled back if it was downscaled) against the original."""
    decoded = decode(out)
    if decoded.size != image.size:
        return Scorer(image).score_upscaled(decoded)
    return Scorer(image).score(decoded)
