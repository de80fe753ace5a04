"""Idempotent retries: the `Idempotency-Key` header of a compress request and the `idempotency_keys` table.

Imports only the stdlib, db.py, errors.py, params.py and job_store.py; no other module writes SQL
on this table. The service layer passes the request in (no Flask proxies here).

A key names one compress request of one account for KEY_TTL (24 hours, as Stripe's): a retry with
the same key and the same request is answered with the first request's job again (no new job, no
second charge); the same key with another request is a 422. The key's row is inserted in the
transaction that charges the quota and inserts the job, and (user_id, key_hash) is its primary
key, so racing duplicates resolve to one job: on PostgreSQL the second insert waits on the unique
index until the first transaction ends; on SQLite BEGIN IMMEDIATE runs the two one after the
other; either way the loser finds the winner's row. A request refused before its job is queued
(any 4xx, the 429 of the daily limit) stores nothing. Keys are not secrets, but they are stored as
their SHA-256 and never logged. What "the same request" means: `fingerprint_of`.
"""

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timedelta

from . import job_store
from .db import to_iso, transaction
from .errors import InvalidRequestError, ServiceError
from .params import (
    JSON_FIELDS,
    MULTIPART_FIELDS,
    decode_base64,
    parse_choices,
    parse_output,
    parse_target_size,
    parse_wait,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on an answer given again (Stripe's name)
MAX_KEY_LENGTH = 255  # as Stripe's; a UUID (36) or a hash fits with room to spare
KEY_TTL = timedelta(hours=24)
INVALID_KEY = (f"Invalid {HEADER} header: use 1 to {MAX_KEY_LENGTH} printable ASCII characters"
               " (a random UUID is a good key).")
KEY_REUSED = (f"This {HEADER} was already used in the last 24 hours for a different request"
              " (another image or other fields); use a new key for a new request.")
# Not compared: the fields that carry the image (its digest or URL is compared instead), and
# `wait`, which changes only how long the answer may wait, not the job.
_NOT_COMPARED = ("file", "file_base64", "file_url", "wait")
# Compared as parsed, not as sent ("0800" is 800, "Cover" is cover, absent is the default).
_PARSED = ("target_size", "output", "max_width", "max_height", "fit", "keep_metadata")
_DECODED = "_imgsmaller_decoded_base64"  # request attribute: (the file_base64 text, max_bytes, its bytes)
_UPLOADED = "_imgsmaller_uploaded"  # request attribute: (the multipart upload, max_bytes, its bytes)


@dataclass(frozen=True)
class IdempotentRequest:
    """The key of a compress request (hashed) and what the request asks for (`fingerprint_of`)."""

    user_id: int
    key_hash: str
    fingerprint: str | None  # None: the request is malformed, and will be refused with its own error


class KeyTaken(Exception):
    """Raised inside the job's transaction (rolling it back) when another request already holds the key."""


def read_request(request, user, max_bytes):
    """None without the header; 422 naming the header for a malformed key; else an IdempotentRequest."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= char <= "~" for char in key):
        raise InvalidRequestError(INVALID_KEY)
    key_hash = hashlib.sha256(key.encode("ascii")).hexdigest()
    return IdempotentRequest(user["id"], key_hash, fingerprint_of(request, max_bytes))


def fingerprint_of(request, max_bytes):
    """SHA-256 of what the request asks for; None when it is malformed (the service then refuses it).

    Not of the raw body: curl sends a new multipart boundary on every retry, and a JSON body may be
    spaced or ordered differently. It covers the image (the SHA-256 of its bytes, the same for a
    multipart `file` and a `file_base64` of the same bytes; or the `file_url` text, never fetched
    for this) and the request's fields: target_size, output, the resize and keep_metadata as parsed
    (`20 kb` is `20KB`, `jpg` is `jpeg`, `"0800"` is 800, absent is the default; the last two only
    when asked for, so a request without them has the fingerprint it had before), every other field
    of the body form's list as sent (JSON's null as absent), but `wait`. Every field it parses must
    be valid (else None), so that a replay never answers a request that would be refused.
    """
    try:
        if request.mimetype == "multipart/form-data":
            fields, form_fields = request.form, MULTIPART_FIELDS
            image = _upload_digest(request, request.files.get("file"), max_bytes)
        elif request.is_json and isinstance(body := request.get_json(silent=True), dict):
            fields, form_fields = body, JSON_FIELDS
            image = _json_image(request, body, max_bytes)
        else:
            return None
        if image is None:
            return None
        parse_wait(fields.get("wait"), text=fields is request.form)  # not compared, but a bad one is refused
        meaning = {
            "image": image,
            "target_size": parse_target_size(fields.get("target_size")),
            "output": parse_output(fields.get("output")),
            **_options_of(fields),
            **{name: fields.get(name) for name in form_fields
               if name not in (*_NOT_COMPARED, *_PARSED) and fields.get(name) is not None},
        }
    except ServiceError:  # a bad field: refused later with the message a request without a key gets
        return None
    text = json.dumps(meaning, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _options_of(fields):
    """The resize and keep_metadata as parsed, each only when it asks for something."""
    choices = parse_choices(fields)
    options, resize, keep = {}, choices.resize, choices.keep_metadata
    if resize is not None:
        options["resize"] = [resize.max_width, resize.max_height, resize.fit]
    if keep != "none":
        options["keep_metadata"] = keep
    return options


def _upload_digest(request, upload, max_bytes):
    """The digest of the multipart `file`; its bytes stay for the service (`uploaded_bytes`)."""
    if upload is None:
        return None
    data = uploaded_bytes(request, upload, max_bytes)
    return {"sha256": hashlib.sha256(data).hexdigest()} if 0 < len(data) <= max_bytes else None


def uploaded_bytes(request, upload, max_bytes):
    """Up to max_bytes + 1 bytes of a multipart upload, read once per request (the fingerprint, then the
    service); the stream is rewound after, for any later reader."""
    kept = getattr(request, _UPLOADED, None)
    if kept is not None and kept[0] is upload and kept[1] == max_bytes:
        return kept[2]
    start = upload.stream.tell()
    data = upload.stream.read(max_bytes + 1)
    upload.stream.seek(start)
    setattr(request, _UPLOADED, (upload, max_bytes, data))
    return data


def _json_image(request, body, max_bytes):
    base64_text, url = body.get("file_base64"), body.get("file_url")
    if (base64_text is None) == (url is None):  # neither or both: refused later
        return None
    if base64_text is not None:
        return {"sha256": hashlib.sha256(decoded_base64(request, base64_text, max_bytes)).hexdigest()}
    return {"url": url.strip()} if isinstance(url, str) and url.strip() else None


def decoded_base64(request, text, max_bytes):
    """params.decode_base64, once per request: the fingerprint and then the service need the bytes
    of the same file_base64 (decoding a 10 MiB image twice cost ~60 ms more, issue 11). Kept on
    the request object, so they go with it; an invalid text raises each time, and is never kept."""
    kept = getattr(request, _DECODED, None)
    if kept is not None and kept[0] is text and kept[1] == max_bytes:
        return kept[2]
    data = decode_base64(text, max_bytes)
    setattr(request, _DECODED, (text, max_bytes, data))
    return data


# -- the table --------------------------------------------------------------------------


def _live_since(now):
    return to_iso(now - KEY_TTL)


def replay_job(db, idempotent, now):
    """(job, the 202's warnings) of this key's first request, to be answered again; None when the key
    is new or expired; 422 when the key was used for a different request."""
    if idempotent is None or idempotent.fingerprint is None:
        return None
    row = db.execute(
        "SELECT fingerprint, job_id, warnings FROM idempotency_keys"
        " WHERE user_id = ? AND key_hash = ? AND created_at > ?",
        (idempotent.user_id, idempotent.key_hash, _live_since(now)),
    ).fetchone()
    if row is None or row["job_id"] is None:
        return None
    if not hmac.compare_digest(row["fingerprint"], idempotent.fingerprint):
        raise InvalidRequestError(KEY_REUSED)
    job = job_store.get_job(db, row["job_id"])
    return None if job is None else (job, json.loads(row["warnings"]) if row["warnings"] else [])


def claim(db, idempotent, now):
    """Take the key for a new job; call first in the job's transaction. KeyTaken when a live row holds it.

    A row older than KEY_TTL that maintenance has not deleted yet is taken over, as if it were gone."""
    if idempotent.fingerprint is None:  # cannot happen: the service refused the malformed request first
        raise InvalidRequestError("The request could not be read.")
    taken = db.execute(
        "INSERT INTO idempotency_keys (user_id, key_hash, fingerprint, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (user_id, key_hash) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " created_at = excluded.created_at, job_id = NULL, warnings = NULL"
        " WHERE idempotency_keys.created_at <= ? RETURNING key_hash",
        (idempotent.user_id, idempotent.key_hash, idempotent.fingerprint, to_iso(now), _live_since(now)),
    ).fetchone()
    if taken is None:
        raise KeyTaken()


def record_job(db, idempotent, job_id, warnings):
    """The job (and the 202's warnings) the key answers with; in the transaction of `claim`."""
    db.execute("UPDATE idempotency_keys SET job_id = ?, warnings = ? WHERE user_id = ? AND key_hash = ?",
               (job_id, json.dumps(list(warnings)) if warnings else None, idempotent.user_id, idempotent.key_hash))


def all_keys(db):
    """Every row (copy-to-postgres, after the jobs they name)."""
    return db.execute("SELECT * FROM idempotency_keys ORDER BY user_id, key_hash").fetchall()


def delete_expired(db, now):
    """Delete the rows older than KEY_TTL (maintenance); returns how many."""
    with transaction(db):
        return db.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (_live_since(now),)).rowcount
