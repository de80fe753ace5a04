"""The service layer: what the API and the web pages both do with compress requests, results and downloads.

Views pass in plain values (the request, the account, its quota, the settings)
and get values back; nothing travels through `flask.g`. Quota is charged in the
transaction that inserts the job, so with N requests left exactly N racing
requests are accepted, and a failure leaves neither a row nor a file.
"""

import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass

from blinker import Namespace
from flask import current_app, send_file
from werkzeug.utils import secure_filename

from . import engine, job_store
from .db import transaction, utcnow
from .errors import GoneError, InvalidRequestError, NotFoundError, ServiceError
from .fetch import fetch_image
from .params import (
    BOTH_SOURCES,
    JSON_FIELDS,
    MULTIPART_FIELDS,
    SECOND_FILE,
    check_size,
    decode_base64,
    ignored_fields,
    parse_output,
    parse_target_size,
)
from .quota import charge, raise_if_exhausted
from .request_id import current_request_id

log = logging.getLogger(__name__)
# Sent with the app as sender and reason=<the error's class name> when a file_url is refused (ops counts them).
file_url_refused = Namespace().signal("file-url-refused")

MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}
MISSING_FILE = (
    "Missing file: send multipart/form-data with a 'file' field, "
    "or JSON with exactly one of 'file_base64' or 'file_url'."
)
MAX_ZIP_IMAGES = 100


@dataclass(frozen=True)
class CompressRequest:
    """A compress request read, parsed and decoded: everything a job needs."""

    data: bytes
    target_size: int | None  # bytes; None: auto
    output: str
    filename: str | None  # a safe stem of the client's file name, for the download name only
    probe: engine.Probe
    warnings: tuple = ()  # request fields that were ignored, as sentences for the 202 answer


def base_url(request, config):
    """PUBLIC_URL when set, else the request's own scheme, host (and script root)."""
    return config["PUBLIC_URL"] or request.url_root.rstrip("/")


def max_upload_bytes(config):
    return int(config["UPLOAD_MAX_MB"] * 1024 * 1024)


# -- accepting a request -----------------------------------------------------------


def accept_compress_request(db, runner, request, user, quota, config):
    """Validate the request, charge the quota and queue the job; returns (job row, charged quota, warnings)."""
    raise_if_exhausted(quota)  # answer 429 before fetching or decoding anything
    compress_request = read_compress_request(request, user, config)
    job, quota = queue_job(db, runner, user, compress_request, config)
    return job, quota, list(compress_request.warnings)


def read_compress_request(request, user, config):
    """The CompressRequest of either body form; the image is fully decoded (422 when corrupt)."""
    data, fields, filename, warnings = _read_body(request, user, config)
    target_size = parse_target_size(fields.get("target_size"))
    output = parse_output(fields.get("output"))
    probe = engine.probe(data, max_pixels=config["MAX_PIXELS"])
    engine.check_output_limits(probe, output)  # 422 before the 202, not a failed job
    return CompressRequest(data, target_size, output, download_stem(filename), probe, tuple(warnings))


def _read_body(request, user, config):
    """(image bytes, the other fields, a client file name, warnings) from multipart or JSON."""
    limit = max_upload_bytes(config)
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequestError(MISSING_FILE)
        data = upload.stream.read(limit + 1)
        check_size(data, limit)
        if not data:
            raise InvalidRequestError("The uploaded file is empty.")
        warnings = ignored_fields([*request.form.keys(), *request.files.keys()], MULTIPART_FIELDS)
        if len(request.files.getlist("file")) > 1:
            warnings.append(SECOND_FILE)
        return data, request.form, upload.filename, warnings
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body is not a valid JSON object.")
        return _read_json_image(body, user, config, limit), body, None, ignored_fields(body, JSON_FIELDS)
    raise InvalidRequestError(MISSING_FILE)


def _read_json_image(body, user, config, limit):
    has_base64, has_url = body.get("file_base64") is not None, body.get("file_url") is not None
    if has_base64 and has_url:
        raise InvalidRequestError(BOTH_SOURCES)
    if not has_base64 and not has_url:
        raise InvalidRequestError(MISSING_FILE)
    # Field checks first: a bad target_size must not cost a fetch.
    parse_target_size(body.get("target_size"))
    parse_output(body.get("output"))
    if has_base64:
        return decode_base64(body["file_base64"], limit)
    url = body["file_url"]
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError("file_url must be a non-empty string.")
    try:
        return fetch_image(
            url.strip(),
            allowed_domain=user["allowed_domain"],
            max_bytes=limit,
            timeout_s=config["FETCH_TIMEOUT_S"],
            allow_private=config["FETCH_ALLOW_PRIVATE"],
        )
    except ServiceError as error:
        file_url_refused.send(current_app._get_current_object(), reason=type(error).__name__)
        raise


def queue_job(db, runner, user, compress_request, config):
    """Store the input, charge the quota and insert the job in one transaction, then submit it."""
    storage = runner.storage
    temp_path = storage.write_temp(compress_request.data)
    now = utcnow()
    input_path = None
    try:
        with transaction(db):
            quota = charge(db, user, config["DAILY_LIMIT"], now)
            job = job_store.insert_job(db, user_id=user["id"], request=compress_request,
                                       ttl_hours=config["RESULT_TTL_HOURS"], now=now)
            input_path = storage.input_path(job["id"])
            storage.move_into_place(temp_path, input_path)
    except BaseException:
        storage.discard(input_path)  # the row was rolled back: no orphan file
        raise
    finally:
        storage.discard(temp_path)  # no-op once moved into place
    log.info("Job %s queued (request id %s)", job["id"], current_request_id())
    runner.submit(job["id"])
    return job, quota


def download_stem(filename):
    """A safe stem of the client's file name, used only in the download's file name."""
    stem = os.path.splitext(secure_filename(filename or ""))[0][:80]
    return stem or None


# -- results and downloads -----------------------------------------------------------


def get_result(db, progress_key):
    """The JobView of a progress key: 404 when unknown, 410 when its result expired."""
    job = job_store.get_job_by_progress_key(db, progress_key)
    if job is None:
        raise NotFoundError("No job with this progress key.")
    view = job_store.view_job(job)
    if view.expired:
        raise GoneError()
    return view


def find_download(db, image_id, may_download):
    """The done job behind /download/<id>; 404 for anyone `may_download(job)` refuses, 410 once expired."""
    job = job_store.get_job(db, image_id)
    if job is None or not may_download(job):
        raise NotFoundError("No such image.")
    raise_if_expired(job)
    if job["status"] != "done":
        raise NotFoundError("This image is not ready yet; poll its result_url.")
    return job


def find_owned_job(db, image_id, user):
    """The account's own job, else 404 for everyone (ids must not be enumerable); 410 once expired."""
    job = job_store.get_owned_job(db, image_id, user["id"])
    if job is None:
        raise NotFoundError("No such image.")
    raise_if_expired(job)
    return job


def raise_if_expired(job):
    if job_store.has_expired(job, utcnow()):
        raise GoneError()


def download_name(job):
    return f"{job['filename'] or 'image'}-{job['id']}.{EXTENSIONS[job['format']]}"


def send_stored_image(open_file, image_format, missing_error, **options):
    """Stream a stored image with its Content-Length; `missing_error` if expiry removed it meanwhile."""
    try:
        file = open_file()  # opened first, so a concurrent deletion cannot turn into a 500
    except FileNotFoundError:
        raise missing_error from None
    response = send_file(file, mimetype=MIME_TYPES[image_format], max_age=0, **options)
    response.content_length = os.fstat(file.fileno()).st_size
    return response


def send_result(storage, job):
    """The result of a done job as an attachment named after the upload."""
    return send_stored_image(lambda: storage.open_result(job["id"]), job["format"], GoneError(),
                             as_attachment=True, download_name=download_name(job))


def zip_results(db, storage, user, job_ids):
    """The account's finished results among `job_ids` as one zip (stored, not deflated: images are compressed)."""
    job_ids = job_ids[:MAX_ZIP_IMAGES]
    if not job_ids:
        raise NotFoundError("No images chosen.")
    archive = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    written = 0
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        for job in job_store.downloadable_jobs(db, user["id"], job_ids, utcnow()):
            try:
                with storage.open_result(job["id"]) as source, bundle.open(download_name(job), "w") as target:
                    while chunk := source.read(1024 * 1024):
                        target.write(chunk)
            except FileNotFoundError:
                continue
            written += 1
    if not written:
        archive.close()
        raise NotFoundError("None of these images is available any more.")
    archive.seek(0)
    return send_file(archive, mimetype="application/zip", as_attachment=True,
                     download_name="imgsmaller-results.zip", max_age=0)
