"""A result's warnings: plain sentences for what a client should know. No Flask, no SQL, no other engine module.

Warned about (issue 9): a result larger than the upload (PNG from a lossy
upload; otherwise only when no file of the format is that small), a
downscaled picture, and a result below auto's threshold in auto mode or when
the upload's size, not the client's target, was the budget. And (issue 13) the
JPEG that `original` gives for a HEIC or HEIF upload, not held to its size.
"""

from dataclasses import dataclass

NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "avif": "AVIF", "heic": "HEIC", "heif": "HEIF"}


@dataclass(frozen=True)
class Outcome:
    """What the warnings are about: the upload, what came out, and how it was made."""

    fmt: str
    input_format: str
    input_bytes: int
    out_bytes: int
    full_size: tuple            # the picture before any downscale (oriented)
    size: tuple                 # the result's
    target: int | None          # the byte budget the search used (None: auto without one)
    capped: bool                # the budget is the upload's size, not the client's target
    score: float | None
    min_score: float | None     # auto's threshold; None for a target the client chose
    lossless: bool
    converted: bool = False     # `original` of an input browsers do not show (HEIC -> JPEG)


def human_size(count):
    """1536 -> "1.5 KB", 51200 -> "50 KB", 4.9 MiB -> "4.9 MB" (1 KB = 1024 bytes, as targets count)."""
    if count < 1024:
        return f"{count} bytes"
    value, unit = (count / 1024, "KB") if count < 1024 * 1024 else (count / 1024 / 1024, "MB")
    text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{text.removesuffix('.0')} {unit}"


def warnings_for(outcome):
    """The warnings of one result, in the order a reader needs them."""
    found = [_converted(outcome) or _larger(outcome), _resized(outcome), _below_threshold(outcome)]
    return [sentence for sentence in found if sentence]


def _how_much_larger(o):
    ratio = o.out_bytes / o.input_bytes
    return f"{ratio:.1f}× larger" if ratio >= 1.1 else f"{round(100 * (ratio - 1)) or 1} % larger"


def _converted(o):
    if not o.converted:
        return None
    upload, name = NAMES.get(o.input_format, o.input_format), NAMES.get(o.fmt, o.fmt)
    sentence = (f"Browsers do not show {upload}, so 'original' gives {name}, which is not held to the "
                f"upload's size")
    if o.out_bytes > o.input_bytes:
        return f"{sentence}: this {name} is {_how_much_larger(o)} than the {upload} upload."
    return f"{sentence} (this one is smaller)."


def _larger(o):
    if o.out_bytes <= o.input_bytes:
        return None
    how_much = _how_much_larger(o)
    upload = NAMES.get(o.input_format, o.input_format)
    if o.fmt == "png":
        if o.lossless:
            return (f"PNG is lossless: this photo is {how_much} as PNG than as its {upload} upload; "
                    "WebP or AVIF keep it small.")
        return (f"PNG has no lossy mode: even with a 256-colour palette this photo is {how_much} than its "
                f"{upload} upload; WebP or AVIF keep it small.")
    name = NAMES.get(o.fmt, o.fmt)
    return f"The result is {how_much} than the {upload} upload: no {name} file of this picture is as small."


def _resized(o):
    if o.size == o.full_size:
        return None
    budget = f"the upload's size ({human_size(o.target)})" if o.capped else human_size(o.target)
    return (f"Resized from {o.full_size[0]}×{o.full_size[1]} to {o.size[0]}×{o.size[1]} "
            f"to fit {budget}.")


def _below_threshold(o):
    if o.min_score is None or o.score is None or o.score >= o.min_score:
        return None
    name = NAMES.get(o.fmt, o.fmt)
    if o.capped:
        return (f"Quality score {o.score:.1f}: no {name} that scores {o.min_score:g} (visually lossless) fits in "
                f"the upload's {human_size(o.input_bytes)}, so this is the best that does.")
    return f"Quality score {o.score:.1f}, below auto's {o.min_score:g}: even the highest {name} quality scores less."


# A warning about keep_metadata, added by the pipeline when it cannot honour the choice.
METADATA_TOO_BIG = ("The metadata to keep would take over half of the file's byte budget; it was left out "
                    "(the colour profile is kept).")
