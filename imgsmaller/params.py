"""Parsing and checking of the compress request's fields: target_size, output, wait, resize, keep_metadata,
base64, ignored fields; and the app's JSON provider, so that no request body can make the JSON parser fail
with a 500."""

import base64
import binascii
import difflib
import re
from dataclasses import dataclass

from flask.json.provider import DefaultJSONProvider

from .engine import KEEP_METADATA, SUPPORTED_INPUT, Resize
from .engine.resize import MAX_SIDE
from .errors import InvalidRequestError, PayloadTooLargeError

OUTPUTS = ("jpeg", "jpg", "png", "webp", "avif", "original")
# GET /api/v1/info's supported_input: the engine's, with jpg as a name for jpeg
# (heic and heif when the pillow-heif wheel is installed).
INPUTS_LISTED = ("jpeg", "jpg", *(fmt for fmt in SUPPORTED_INPUT if fmt != "jpeg"))
MIN_TARGET_BYTES = 1024
# Larger targets than any accepted input could need are clamped, so an absurd
# "99999999999999999999MB" still fits SQLite's 64-bit integers.
MAX_TARGET_BYTES = 2**40
# Checked before anything else: a 10**6-digit target once cost ~30 s of CPU with
# the GIL held in int(Decimal(...)) (issue 14, finding 1). 64 characters hold any
# sensible size with room for spaces and leading zeros; the arithmetic below is
# then on at most 64 digits.
MAX_TARGET_TEXT = 64
# Above 13 integer digits (2**40 has 13) a size is over MAX_TARGET_BYTES in any unit.
_MAX_INTEGER_DIGITS = 13
_SIZE = re.compile(r"^\s*([0-9]*)(?:\.([0-9]+))?\s*([a-z]*)\s*$", re.IGNORECASE | re.ASCII)
# 1KB = 1024 bytes, as the hosted service counts (docs/api.md); k, kB and KiB are the same.
_UNITS = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_INVALID_TARGET = "Invalid target_size: use 'auto' or a size such as 20KB, 1.5MB or 500000B."
# `wait` is seconds to hold the compress answer for the job's end; longer asks wait this long.
MAX_WAIT_S = 60
# A decimal number as in JSON (sign, digits, fraction, exponent). Not Python's float(), which
# would also take "1_0", "inf" and "nan"; a minus is allowed so that -0 is 0, as for JSON.
_WAIT_TEXT = re.compile(r"^\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*$", re.ASCII)
_INVALID_WAIT = f"Invalid wait: use a number of seconds from 0 to {MAX_WAIT_S}."
# The fields of each body form; others are ignored, and the 202 answer's warnings say so.
# csrf_token: the compressor page's form may carry its CSRF token as a field.
OPTION_FIELDS = ("target_size", "output", "wait", "callback_url", "max_width", "max_height", "fit", "keep_metadata")
MULTIPART_FIELDS = ("file", *OPTION_FIELDS)
JSON_FIELDS = ("file_base64", "file_url", *OPTION_FIELDS)
_QUIETLY_ACCEPTED = ("csrf_token",)
SECOND_FILE = "Ignored a second 'file' part: one request compresses one image, the first."
BOTH_SOURCES = "Send only one of file_base64 or file_url."
_OTHER_FORM_HINTS = {
    "file": "a JSON body sends the image as 'file_base64' or 'file_url'.",
    "file_base64": "a multipart body sends the image as its 'file' part.",
    "file_url": "a multipart body sends the image as its 'file' part (file_url works in a JSON body).",
}
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def parse_target_size(value):
    """None for auto; otherwise the target in bytes (1KB = 1024 bytes), at most MAX_TARGET_BYTES.

    Accepts 20KB, 20 kb, 20k, 20kB, 20KiB, 1.5MB, 1.5MiB, 500000B. The text's length is
    bounded before any parsing, and the number is turned into bytes by integer
    arithmetic on its digits (no Decimal, so no Overflow and no quadratic conversion).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidRequestError(_INVALID_TARGET)
    if not isinstance(value, str):  # a JSON number: the size needs a unit
        raise InvalidRequestError(_bare_number_message(value))
    if len(value) > MAX_TARGET_TEXT:
        raise InvalidRequestError(f"Invalid target_size: at most {MAX_TARGET_TEXT} characters, "
                                  "such as 20KB, 1.5MB or 500000B.")
    if value.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.match(value)
    if not match or not (match.group(1) or match.group(2)):
        raise InvalidRequestError(_INVALID_TARGET)
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3).lower()
    if not unit:
        raise InvalidRequestError(_bare_number_message(value.strip()))
    if unit not in _UNITS:
        raise InvalidRequestError(_INVALID_TARGET)
    if unit == "b" and fraction:
        raise InvalidRequestError("Invalid target_size: a size in bytes must be a whole number.")
    whole = whole.lstrip("0")
    if len(whole) > _MAX_INTEGER_DIGITS:
        return MAX_TARGET_BYTES
    multiplier = _UNITS[unit]
    size = int(whole or 0) * multiplier + int(fraction or 0) * multiplier // 10 ** len(fraction)
    if size < MIN_TARGET_BYTES:
        raise InvalidRequestError("Invalid target_size: the smallest target is 1KB.")
    return min(size, MAX_TARGET_BYTES)


def _bare_number_message(number):
    text = str(number)
    if re.fullmatch(r"[0-9]{1,15}", text):
        return f"Invalid target_size: a size needs a unit: did you mean {text}B? (Or use 'auto', 20KB, 1.5MB.)"
    return _INVALID_TARGET + " A size needs a unit."


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body the parser cannot handle is a ValueError.

    Flask turns a ValueError from `loads` into "no JSON" (get_json(silent=True) is
    None -> the API's 422 "not a valid JSON object"). The stdlib parser raises
    RecursionError, not ValueError, for arrays or objects nested ~1,000 deep, which
    was a 500 (issue 14, finding 9).
    """

    sort_keys = False  # answers keep the field order of docs/api.md

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("The JSON body is nested too deeply.") from None


def _absent(value):
    """Not sent, JSON null, or an empty form field."""
    return value is None or (isinstance(value, str) and not value.strip())


def _one_of(value, allowed, invalid, absent=None):
    """`value` stripped and lower-cased when it is one of `allowed`, `absent` when not sent; else 422 `invalid`."""
    if _absent(value):
        return absent
    name = value.strip().lower() if isinstance(value, str) else None
    if name not in allowed:
        raise InvalidRequestError(invalid)
    return name


def parse_output(value):
    """The requested output format, with 'jpg' folded into 'jpeg'."""
    name = _one_of(value, OUTPUTS, f"Invalid output: use one of {', '.join(OUTPUTS)}.", absent="original")
    return "jpeg" if name == "jpg" else name


def parse_wait(value, *, text=False):
    """None when absent; else the seconds to wait, at most MAX_WAIT_S: a JSON number, or with `text` a form field."""
    if value is None:
        return None
    if text and isinstance(value, str):
        if len(value) > MAX_TARGET_TEXT or not _WAIT_TEXT.match(value):
            raise InvalidRequestError(_INVALID_WAIT)
        value = float(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(_INVALID_WAIT)
    if not 0 <= value < float("inf"):  # NaN fails too
        raise InvalidRequestError(_INVALID_WAIT)
    return float(min(value, MAX_WAIT_S))


def parse_side(value, name):
    """None when absent; else a whole number of pixels, 1..MAX_SIDE: a JSON integer, or digits
    as text (form fields are text; JSON clients often send "800")."""
    if _absent(value):
        return None
    invalid = f"Invalid {name}: use a whole number of pixels from 1 to {MAX_SIDE}."
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 16 or not text.isdigit() or not text.isascii():  # no "1e3", no "٣", no 10**6 digits
            raise InvalidRequestError(invalid)
        value = int(text)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(invalid)
    if not 1 <= value <= MAX_SIDE:
        raise InvalidRequestError(invalid)
    return value


def parse_resize(fields):
    """The request's Resize (max_width, max_height, fit), or None when it asks for none."""
    width, height = parse_side(fields.get("max_width"), "max_width"), parse_side(fields.get("max_height"), "max_height")
    fit = _one_of(fields.get("fit"), ("inside", "cover"),
                  "Invalid fit: use 'inside' or 'cover' (with both max_width and max_height).")
    if fit is not None and (width is None or height is None):
        raise InvalidRequestError("fit needs both max_width and max_height.")
    return Resize.of(width, height, fit)


def parse_keep_metadata(value):
    """Which metadata the result keeps: one of KEEP_METADATA, 'none' when absent."""
    return _one_of(value, KEEP_METADATA, f"Invalid keep_metadata: use one of {', '.join(KEEP_METADATA)}.",
                   absent="none")


@dataclass(frozen=True)
class Choices:
    """What a compress request asks of the picture besides its format and size: resize and keep_metadata."""

    resize: Resize | None = None  # None: the picture's own size
    keep_metadata: str = "none"  # one of engine.KEEP_METADATA


def parse_choices(fields):
    return Choices(parse_resize(fields), parse_keep_metadata(fields.get("keep_metadata")))


def decode_base64(text, max_bytes):
    """Decode standard base64 (a data:image/...;base64, prefix is tolerated)."""
    if not isinstance(text, str):
        raise InvalidRequestError("file_base64 must be a string.")
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = "".join(text.split())  # line breaks from `base64` tools are fine
    if len(text) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLargeError.for_limit(max_bytes)
    try:
        if len(text) % 4:  # standard base64 is padded to whole 4-character groups
            raise ValueError
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("file_base64 is not valid base64.") from None
    if not data:
        raise InvalidRequestError("file_base64 is empty.")
    check_size(data, max_bytes)
    return data


def check_size(data, max_bytes):
    if len(data) > max_bytes:
        raise PayloadTooLargeError.for_limit(max_bytes)


def ignored_fields(names, known):
    """A warning for each field name that is not one of `known`, with a suggestion when one is close."""
    warnings = []
    for name in dict.fromkeys(names):  # once each, in the request's order
        if name in known or name in _QUIETLY_ACCEPTED:
            continue
        if not isinstance(name, str):  # Werkzeug gives None for a part whose name it cannot read (was a 500)
            warnings.append("Ignored a field whose name could not be read.")
            continue
        text = name if len(name) <= 60 else name[:57] + "..."
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        if name in _OTHER_FORM_HINTS:
            warnings.append(f"Ignored field '{text}': {_OTHER_FORM_HINTS[name]}")
        elif close:
            warnings.append(f"Ignored field '{text}' — did you mean '{close[0]}'?")
        else:
            warnings.append(f"Ignored field '{text}'.")
    return warnings
