"""compress(): decode an upload, then the target search or auto mode, into a Result. No Flask, no SQL, no files.

Pipeline: sniff + validate + decode the first frame (decode.py) -> apply EXIF
orientation, 8-bit RGB(A), keep the ICC profile, drop all other metadata ->
flatten on white for JPEG -> either fit a byte target (target.py: quality
search, then downscale below a quality floor) or auto (auto.py: the smallest
encode with SSIMULACRA2 >= AUTO_MIN_SCORE) -> Result with the score
(quality.py). It is thread-safe: no process-global state is touched per call.
"""

import time
from dataclasses import dataclass, field

from imgsmaller.errors import InvalidRequestError

from .auto import encode_auto
from .decode import check_output_limits, flatten, normalise, open_image
from .formats import output_format
from .metadata import stripped_input
from .quality import score_result
from .target import fit_target


@dataclass(frozen=True)
class Result:
    data: bytes
    format: str
    width: int
    height: int
    original_format: str
    original_width: int
    original_height: int
    original_bytes: int
    quality_score: float | None
    quality_metric: str = "ssimulacra2"
    encodes: int = 0
    settings: dict = field(default_factory=dict)


def compress(data, *, output="original", target_size=None, max_pixels):
    """Compress one image; see the module docstring. Raises the errors of imgsmaller.errors."""
    started = time.perf_counter()
    decoded, facts = open_image(data, max_pixels=max_pixels)
    fmt = output_format(output, facts.format)
    check_output_limits(facts, fmt)
    try:
        orientation = decoded.getexif().get(0x0112)
    except Exception:  # unreadable EXIF: normalise ignores it too
        orientation = None
    image, icc = normalise(decoded)
    if image is not decoded:
        decoded.close()
    del decoded
    if fmt == "jpeg":
        image = flatten(image)
    if target_size is None:
        fallback = stripped_input(data, fmt, facts.frames, orientation) if fmt == facts.format else None
        out, settings, encodes, score = encode_auto(image, icc, fmt, input_format=facts.format,
                                                    input_bytes=len(data), fallback=fallback)
        width, height = image.size
    else:
        target = int(target_size)
        if target < 1:
            raise InvalidRequestError("target_size must be positive.")
        out, scaled, settings, encodes = fit_target(image, icc, fmt, target)
        width, height = scaled.size
        if scaled is not image:
            settings["scale"] = round(width / image.width, 4)
        scaled = None
        scoring = time.perf_counter()
        score = score_result(image, out)
        settings["score_seconds"] = round(time.perf_counter() - scoring, 3)
    settings["seconds"] = round(time.perf_counter() - started, 3)
    return Result(
        data=out, format=fmt, width=width, height=height,
        original_format=facts.format, original_width=facts.width, original_height=facts.height,
        original_bytes=len(data), quality_score=None if score is None else round(float(score), 2),
        encodes=encodes, settings=settings)
