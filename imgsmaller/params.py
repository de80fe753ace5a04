"""Parsing and checking of the compress request's fields: target_size, output, base64."""

import base64
import binascii
import re
from decimal import Decimal

from .errors import InvalidRequestError, PayloadTooLargeError

OUTPUTS = ("jpeg", "jpg", "png", "webp", "avif", "original")
INPUTS_LISTED = ("jpeg", "jpg", "png", "webp", "avif")
MIN_TARGET_BYTES = 1024
# Larger targets than any accepted input could need are clamped, so an absurd
# "99999999999999999999MB" still fits SQLite's 64-bit integers.
MAX_TARGET_BYTES = 2**40
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(b|kb|mb)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024 * 1024}
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def parse_target_size(value):
    """None for auto; otherwise the target in bytes (1KB = 1024 bytes)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise InvalidRequestError(
            "Invalid target_size: use 'auto' or a size such as 20KB, 1.5MB or 500000B."
        )
    number, unit = match.groups()
    if unit.lower() == "b" and "." in number:
        raise InvalidRequestError("Invalid target_size: a size in bytes must be a whole number.")
    size = int(Decimal(number) * _UNITS[unit.lower()])
    if size < MIN_TARGET_BYTES:
        raise InvalidRequestError("Invalid target_size: the smallest target is 1KB.")
    return min(size, MAX_TARGET_BYTES)


def parse_output(value):
    """The requested output format, with 'jpg' folded into 'jpeg'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "original"
    name = value.strip().lower() if isinstance(value, str) else None
    if name not in OUTPUTS:
        raise InvalidRequestError(f"Invalid output: use one of {', '.join(OUTPUTS)}.")
    return "jpeg" if name == "jpg" else name


def decode_base64(text, max_bytes):
    """Decode standard base64 (a data:image/...;base64, prefix is tolerated)."""
    if not isinstance(text, str):
        raise InvalidRequestError("file_base64 must be a string.")
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = "".join(text.split())  # line breaks from `base64` tools are fine
    if len(text) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLargeError(_too_large_message(max_bytes))
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
        raise PayloadTooLargeError(_too_large_message(max_bytes))


def _too_large_message(max_bytes):
    return f"File too large: the limit is {max_bytes / (1024 * 1024):g}MB."
