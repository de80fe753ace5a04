"""engine/quality.py: an output decoded for its quality_score is the picture Pillow's plugins decode."""

import io

import numpy as np
import pytest
from PIL import Image

from imgsmaller.engine.quality import decode

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
