"""The service layer: what the API and the web pages both do with a compress request (results.py: its result).

Views pass in plain values (the request, the account, its quota, the settings)
and get values back; nothing travels through `flask.g`. Quota is charged in the
transaction that inserts the job, so with N requests left exactly N racing
requests are accepted, and a failure leaves neither a row nor a file.
"""

import functools
import logging
import os
from dataclasses import dataclass, replace

from blinker import Namespace
from flask import current_app
from werkzeug.sansio.utils import get_current_url
from werkzeug.utils import secure_filename

from . import engine, idempotency, job_store, webhooks
from .db import transaction, utcnow
from .errors import (
    InvalidRequestError,
    ServiceError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from .fetch import fetch_image
from .limits import current_limits
from .params import (
    BOTH_SOURCES,
    JSON_FIELDS,
    MULTIPART_FIELDS,
    SECOND_FILE,
    Choices,
    check_size,
    ignored_fields,
    parse_choices,
    parse_output,
    parse_target_size,
    parse_wait,
)
from .quota import charge, quota_status, raise_if_exhausted
from .request_id import current_request_id

log = logging.getLogger(__name__)
# Sent with the app as sender and reason=<the error's class name> when a file_url is refused (ops counts them).
file_url_refused = Namespace().signal("file-url-refused")

MISSING_FILE = (
    "Missing file: send multipart/form-data with a 'file' field, "
    "or JSON with exactly one of 'file_base64' or 'file_url'."
)


@dataclass(frozen=True)
class CompressRequest:
    """A compress request read, parsed and decoded: everything a job needs."""

    data: bytes
    target_size: int | None  # bytes; None: auto
    output: str
    filename: str | None  # a safe stem of the client's file name, for the download name only
    probe: engine.Probe
    wait_s: float | None = None  # the API's `wait`: how long the answer may wait for the job (not stored)
    warnings: tuple = ()  # request fields that were ignored, as sentences for the 202 answer
    choices: Choices = Choices()  # resize and keep_metadata
    callback: tuple | None = None  # (callback_url, the request's base_url for the body's links): webhooks.py


def base_url(request, config):
    """PUBLIC_URL when set, else the request's own scheme, host (and script root)."""
    return config["PUBLIC_URL"] or _root_url(request.scheme, request.host, request.root_path)


@functools.lru_cache(maxsize=64)
def _root_url(scheme, host, root_path):
    """werkzeug's request.url_root without its slash, remembered: building it (IRI decoding) was
    ~7 % of a GET /api/v1/info (issue 11). The host is the client's: the cache is bounded."""
    return get_current_url(scheme, host, root_path).rstrip("/")


def max_upload_bytes(config):
    return int(config["UPLOAD_MAX_MB"] * 1024 * 1024)


# -- accepting a request -----------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A compress request accepted: its job row, the quota after it, the 202's warnings."""

    job: object
    quota: object  # quota.QuotaStatus
    warnings: list
    replayed: bool = False  # a retry with the Idempotency-Key of an earlier request: its job, not charged again
    wait_s: float | None = None  # the API's `wait` (never for a replay: it is answered at once)
    ended: object = None  # accept_and_wait: the job's JobView when it ended within `wait_s`


def accept_compress_request(db, runner, request, user, quota, config):
    """Validate the request, charge the quota and queue the job; or, for a retry with the Idempotency-Key of
    an earlier request, its job again (before the quota is checked: a retry is never a 429). -> Accepted."""
    idempotent = idempotency.read_request(request, user, max_upload_bytes(config))  # 422: a malformed key
    if replay := _replay(db, idempotent, quota):
        return replay
    compress_request = check_compress_request(db, request, user, quota, config)
    try:
        job, quota = queue_job(db, runner, user, compress_request, config, idempotent)
    except idempotency.KeyTaken:  # a duplicate sent at the same time won: its answer, or 422 if it differs
        if replay := _replay(db, idempotent, quota_status(db, user, config["DAILY_LIMIT"], utcnow())):
            return replay
        raise ServiceUnavailableError("Another request with this Idempotency-Key is being handled; retry.") from None
    return Accepted(job, quota, list(compress_request.warnings), wait_s=compress_request.wait_s)


def _replay(db, idempotent, quota):
    found = idempotency.replay_job(db, idempotent, utcnow())
    if found is None:
        return None
    job, warnings = found
    log.info("Job %s answered again for a retried Idempotency-Key (request id %s)", job["id"], current_request_id())
    return Accepted(job, quota, warnings, replayed=True)


def accept_and_wait(db, runner, waiter, request, user, quota, config):
    """accept_compress_request, then wait up to the request's `wait` for the job's end (`ended`: its JobView,
    or None: no `wait`, a replay, not ended in time, or no waiting slot free)."""
    accepted = accept_compress_request(db, runner, request, user, quota, config)
    if accepted.wait_s is None:
        return accepted
    ended = waiter.wait_for_end(db, accepted.job["id"], accepted.wait_s)
    return replace(accepted, ended=job_store.view_job(ended) if ended is not None else None)


def check_compress_request(db, request, user, quota, config):
    """Everything before the charge: quota left, the account's refused images, the fields, the image decoded.

    Returns the CompressRequest; 422 when the image is corrupt (counted against the account).
    """
    raise_if_exhausted(quota)  # answer 429 before fetching or decoding anything
    throttle = current_app.extensions["imgsmaller.throttle"]
    raise_if_refusing_images(throttle, db, user)
    data, (target_size, output, wait_s, choices, callback), filename, warnings = _read_body(request, user, config)
    try:
        probe = validate_image(data, output, config, choices.resize)
    except InvalidRequestError:
        throttle.count_refused_image(db, user["id"])  # decoded in vain: counts against the account
        raise
    return CompressRequest(data, target_size, output, download_stem(filename), probe, wait_s, tuple(warnings),
                           choices, callback)


def raise_if_refusing_images(throttle, db, user):
    """429 for an account that sent too many images refused as invalid within the hour."""
    wait = throttle.refused_images_wait(db, user["id"])
    if wait:
        raise TooManyRequestsError(
            f"Too many invalid images from this account in the last hour "
            f"(at most {throttle.refused_images_limit.max_events}); try again in {wait} seconds.",
            headers={"Retry-After": str(wait)})


def validate_image(data, output, config, resize=None):
    """The image fully decoded (422 when corrupt or too big for `output`), within this process's decode budget."""
    budget = current_limits(current_app).validation_budget  # waits for room, or 503
    probe = engine.probe(data, max_pixels=config["MAX_PIXELS"], budget=budget)
    engine.check_output_limits(probe, output, resize)  # 422 before the 202, not a failed job
    return probe


def _parse_fields(request, fields, user, config):
    """(target_size, output, wait_s, choices, callback) of the request's fields; 422 at the first bad one."""
    return (parse_target_size(fields.get("target_size")), parse_output(fields.get("output")),
            parse_wait(fields.get("wait"), text=request.mimetype == "multipart/form-data"),  # a form's are text
            parse_choices(fields),
            webhooks.parse_callback(fields.get("callback_url"), user["allowed_domain"], base_url(request, config)))


def _read_body(request, user, config):
    """(image bytes, the parsed fields (_parse_fields), a client file name, warnings) from multipart or JSON."""
    limit = max_upload_bytes(config)
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequestError(MISSING_FILE)
        data = idempotency.uploaded_bytes(request, upload, limit)  # read once, with the fingerprint's
        check_size(data, limit)
        if not data:
            raise InvalidRequestError("The uploaded file is empty.")
        warnings = ignored_fields([*request.form.keys(), *request.files.keys()], MULTIPART_FIELDS)
        if len(request.files.getlist("file")) > 1:
            warnings.append(SECOND_FILE)
        return data, _parse_fields(request, request.form, user, config), upload.filename, warnings
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body is not a valid JSON object.")
        data, fields = _read_json_image(request, body, user, config, limit)
        return data, fields, None, ignored_fields(body, JSON_FIELDS)
    raise InvalidRequestError(MISSING_FILE)


def _read_json_image(request, body, user, config, limit):
    has_base64, has_url = body.get("file_base64") is not None, body.get("file_url") is not None
    if has_base64 and has_url:
        raise InvalidRequestError(BOTH_SOURCES)
    if not has_base64 and not has_url:
        raise InvalidRequestError(MISSING_FILE)
    fields = _parse_fields(request, body, user, config)  # first: a bad target_size must not cost a fetch
    if has_base64:  # already decoded for the Idempotency-Key's fingerprint, if the request has one
        return idempotency.decoded_base64(request, body["file_base64"], limit), fields
    url = body["file_url"]
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError("file_url must be a non-empty string.")
    with current_limits(current_app).fetch_slot(user["id"]):  # 429/503 at once when none is free
        return _fetch(url.strip(), user, config, limit), fields


def _fetch(url, user, config, limit):
    try:
        return fetch_image(url, allowed_domain=user["allowed_domain"], max_bytes=limit,
                           timeout_s=config["FETCH_TIMEOUT_S"], allow_private=config["FETCH_ALLOW_PRIVATE"])
    except ServiceError as error:
        file_url_refused.send(current_app._get_current_object(), reason=type(error).__name__)
        raise


def queue_job(db, runner, user, compress_request, config, idempotent=None):
    """Store the input, claim the Idempotency-Key, charge the quota and insert the job in one transaction,
    then submit it. The key first: a duplicate waits there for its twin to commit, then finds it (KeyTaken)."""
    storage = runner.storage
    staged = storage.stage_input(compress_request.data)
    now = utcnow()
    job = None
    try:
        with transaction(db):
            if idempotent is not None:
                idempotency.claim(db, idempotent, now)
            quota = charge(db, user, config["DAILY_LIMIT"], now)
            job = job_store.insert_job(db, user_id=user["id"], request=compress_request,
                                       ttl_hours=config["RESULT_TTL_HOURS"], now=now)
            if idempotent is not None:
                idempotency.record_job(db, idempotent, job["id"], compress_request.warnings)
            webhooks.expect_delivery(db, job, compress_request.callback)  # in this transaction, if there is one
            storage.commit_input(staged, job["id"])
    except ServiceUnavailableError:
        # The store itself failed: no object was written (a PUT is atomic), or, if only its answer
        # was lost, the bucket's lifecycle rule removes it; a delete now would wait on the store again.
        raise
    except BaseException:
        if job is not None:
            _delete_input_quietly(storage, job["id"])  # the row was rolled back: no orphan file
        raise
    finally:
        storage.discard_staged(staged)  # no-op once committed
    log.info("Job %s queued (request id %s)", job["id"], current_request_id())
    runner.submit(job["id"])
    return job, quota


def _delete_input_quietly(storage, job_id):
    """Best effort, so the error that rolled the transaction back is the one answered."""
    try:
        storage.delete_input(job_id)
    except ServiceError:
        log.warning("The input of rolled-back job %s could not be deleted", job_id)


def download_stem(filename):
    """A safe stem of the client's file name, used only in the download's file name."""
    stem = os.path.splitext(secure_filename(filename or ""))[0][:80]
    return stem or None
