"""engine/quality.py: an output decoded for its quality_score has the pixels Pillow's plugins decode, and its score."""

import io

import numpy as np
import pytest
from PIL import Image

from imgsmaller.engine.quality import decode, pixels, score_result
from imgsmaller.engine.score import Scorer

from images import photo


@pytest.mark.parametrize("fmt, params, alpha", [
    ("WEBP", {"quality": 70}, False), ("WEBP", {"quality": 70}, True), ("WEBP", {"lossless": True}, False),
    ("WEBP", {"lossless": True}, True), ("JPEG", {"quality": 80}, False), ("PNG", {}, False), ("PNG", {}, True),
])
def test_a_decoded_output_has_the_pixels_and_mode_pillow_decodes(fmt, params, alpha):
    buf = io.BytesIO()
    photo(120, 80, alpha=alpha).save(buf, fmt, **params)
    with Image.open(io.BytesIO(buf.getvalue())) as plugin:
        plugin.load()
        expected = plugin.convert("RGBA" if alpha else "RGB")
    decoded = decode(buf.getvalue())
    assert (decoded.mode, decoded.size) == (expected.mode, expected.size)
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


@pytest.mark.parametrize("fmt, params, alpha", [
    ("WEBP", {"quality": 70}, False), ("WEBP", {"quality": 70}, True), ("WEBP", {"lossless": True}, False),
    ("WEBP", {"lossless": True}, True), ("JPEG", {"quality": 80}, False), ("PNG", {}, True),
])
def test_an_output_decoded_for_its_score_has_the_pixels_pillow_decodes(fmt, params, alpha):
    # WebP through OpenCV's libwebp (an array, half the plugin's peak memory): the same pixels.
    buf = io.BytesIO()
    photo(120, 80, alpha=alpha).save(buf, fmt, **params)
    decoded = pixels(buf.getvalue())
    assert isinstance(decoded, np.ndarray) == (fmt == "WEBP")
    assert np.array_equal(np.asarray(decoded), np.asarray(decode(buf.getvalue())))


@pytest.mark.parametrize("alpha", [False, True])
def test_a_score_is_the_same_from_the_array_as_from_the_image(alpha):
    image = photo(900, 700, alpha=alpha, seed=3)
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=40)
    scorer = Scorer(image)
    assert scorer.score(pixels(buf.getvalue())) == scorer.score(decode(buf.getvalue()))
    opaque = np.asarray(image.convert("RGB"))   # an opaque RGB result of an RGBA original, and the reverse
    assert scorer.score(opaque) == scorer.score(Image.fromarray(opaque))
    assert score_result(image, buf.getvalue()) == scorer.score(decode(buf.getvalue()))
