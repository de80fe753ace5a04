"""The public JSON API of API.md: /api/v1/info, /api/v1/compress, /result/<key>, /download/<id>.

Views are thin: read the request, call the parts that do the work, return a dict.
"""

import hmac
import os
import secrets
from datetime import timedelta

from flask import Blueprint, current_app, g, request, send_file
from werkzeug.utils import secure_filename

from . import engine
from .auth import current_api_user
from .db import get_db, to_iso, transaction, utcnow
from .errors import GoneError, InvalidRequestError, NotFoundError
from .fetch import fetch_image
from .params import INPUTS_LISTED, OUTPUTS, check_size, decode_base64, parse_output, parse_target_size
from .quota import charge, raise_if_exhausted

bp = Blueprint("api", __name__)

MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}
MISSING_FILE = (
    "Missing file: send multipart/form-data with a 'file' field, "
    "or JSON with exactly one of 'file_base64' or 'file_url'."
)


def base_url():
    """PUBLIC_URL when set, else the request's own scheme, host (and script root)."""
    return current_app.config["PUBLIC_URL"] or request.url_root.rstrip("/")


def max_upload_bytes():
    return int(current_app.config["UPLOAD_MAX_MB"] * 1024 * 1024)


@bp.get("/api/v1/info")
def get_info():
    current_api_user()
    quota = g.quota
    return {
        "endpoint": f"{base_url()}/api/v1/compress",
        "remaining_today": quota.remaining,
        "reset_in_seconds": quota.reset_in_seconds,
        "limit": quota.limit,
        "supported_input": list(INPUTS_LISTED),
        "supported_output": list(OUTPUTS),
    }


@bp.post("/api/v1/compress")
def compress_image():
    job = accept_compress_request(current_api_user())
    return {
        "queued": True,
        "progress_key": job["progress_key"],
        "result_url": f"{base_url()}/result/{job['progress_key']}",
        "download_url_template": f"{base_url()}/download/{{imageId}}",
    }, 202


def accept_compress_request(user):
    """Check quota, read and validate the request's image and fields, and queue the job.

    Shared by the API (key) and the compressor page (session); g.quota must hold the
    account's quota status, and holds the charged one afterwards.
    """
    raise_if_exhausted(g.quota)  # answer 429 before fetching or decoding anything
    data, fields, filename = read_compress_request(user)
    target_size = parse_target_size(fields.get("target_size"))
    output = parse_output(fields.get("output"))
    probe = engine.probe(data, max_pixels=current_app.config["MAX_PIXELS"])
    engine.check_output_limits(probe, output)  # 422 before the 202, not a failed job
    return queue_job(user, data, probe, target_size=target_size, output=output, filename=filename)


def read_compress_request(user):
    """(image bytes, the other fields, a client file name for the download) from either body form."""
    limit = max_upload_bytes()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequestError(MISSING_FILE)
        data = upload.stream.read(limit + 1)
        check_size(data, limit)
        if not data:
            raise InvalidRequestError("The uploaded file is empty.")
        return data, request.form, upload.filename
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("The request body is not a valid JSON object.")
        return read_json_image(body, user, limit), body, None
    raise InvalidRequestError(MISSING_FILE)


def read_json_image(body, user, limit):
    has_base64, has_url = body.get("file_base64") is not None, body.get("file_url") is not None
    if has_base64 == has_url:
        raise InvalidRequestError(MISSING_FILE)
    # Field checks first: a bad target_size must not cost a fetch.
    parse_target_size(body.get("target_size"))
    parse_output(body.get("output"))
    if has_base64:
        return decode_base64(body["file_base64"], limit)
    url = body["file_url"]
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError("file_url must be a non-empty string.")
    config = current_app.config
    return fetch_image(
        url.strip(),
        allowed_domain=user["allowed_domain"],
        max_bytes=limit,
        timeout_s=config["FETCH_TIMEOUT_S"],
        allow_private=config["FETCH_ALLOW_PRIVATE"],
    )


def queue_job(user, data, probe, *, target_size, output, filename):
    """Store the input, charge the quota and insert the job in one transaction, then submit it."""
    runner = current_app.extensions["imgsmaller.jobs"]
    storage = current_storage()
    temp_path = storage.write_temp(data)
    now = utcnow()
    db = get_db()
    input_path = None
    try:
        with transaction(db):
            g.quota = charge(db, user, current_app.config["DAILY_LIMIT"], now)
            job = db.execute(
                "INSERT INTO jobs (user_id, progress_key, download_token, target_size, output, filename,"
                " original_format, original_bytes, original_width, original_height, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (user["id"], secrets.token_urlsafe(24), secrets.token_urlsafe(24), target_size, output,
                 download_stem(filename), probe.format, len(data), probe.width, probe.height,
                 to_iso(now), to_iso(now + timedelta(hours=current_app.config["RESULT_TTL_HOURS"]))),
            ).fetchone()
            input_path = storage.input_path(job["id"])
            storage.move_into_place(temp_path, input_path)
    except BaseException:
        storage.discard(input_path)  # the row was rolled back: no orphan file
        raise
    finally:
        storage.discard(temp_path)  # no-op once moved into place
    runner.submit(job["id"])
    return job


def download_stem(filename):
    """A safe stem of the client's file name, used only in the download's file name."""
    stem = os.path.splitext(secure_filename(filename or ""))[0][:80]
    return stem or None


@bp.get("/result/<progress_key>")
def get_result(progress_key):
    job = get_db().execute("SELECT * FROM jobs WHERE progress_key = ?", (progress_key,)).fetchone()
    if job is None:
        raise NotFoundError("No job with this progress key.")
    if job["status"] in ("queued", "running"):
        return {"status": "processing"}
    if job["status"] == "failed":
        return {"status": "failed", "message": job["message"]}
    raise_if_expired(job)
    return done_job_fields(job)


def done_job_fields(job):
    return {
        "status": "done",
        "image_id": job["id"],
        "download": f"{base_url()}/download/{job['id']}?token={job['download_token']}",
        "bytes": job["bytes"],
        "format": job["format"],
        "width": job["width"],
        "height": job["height"],
        "original_bytes": job["original_bytes"],
        "original_format": job["original_format"],
        "original_width": job["original_width"],
        "original_height": job["original_height"],
        "saved_percent": round(100 * (1 - job["bytes"] / job["original_bytes"]), 1),
        "quality_score": job["quality_score"],
        "expires_at": job["expires_at"],
    }


def raise_if_expired(job):
    if job["files_deleted"] or job["expires_at"] <= to_iso(utcnow()):
        raise GoneError()


@bp.get("/download/<int:image_id>")
def download_image(image_id):
    job = get_db().execute("SELECT * FROM jobs WHERE id = ?", (image_id,)).fetchone() if image_id < 2**63 else None
    if job is None or not may_download(job):
        raise NotFoundError("No such image.")
    raise_if_expired(job)
    if job["status"] != "done":
        raise NotFoundError("This image is not ready yet; poll its result_url.")
    return send_stored_file(current_storage().result_path(job["id"]), job["format"], GoneError(),
                            as_attachment=True, download_name=download_name(job))


def current_storage():
    return current_app.extensions["imgsmaller.jobs"].storage


def download_name(job):
    return f"{job['filename'] or 'image'}-{job['id']}.{EXTENSIONS[job['format']]}"


def send_stored_file(path, image_format, missing_error, **options):
    """Stream a stored image with its Content-Length; `missing_error` if expiry removed it meanwhile."""
    try:
        file = open(path, "rb")  # opened first, so a concurrent deletion cannot turn into a 500
    except FileNotFoundError:
        raise missing_error from None
    response = send_file(file, mimetype=MIME_TYPES[image_format], max_age=0, **options)
    response.content_length = os.fstat(file.fileno()).st_size
    return response


def may_download(job):
    """The result link's token, or the owner's API key; anyone else must not learn the id exists."""
    token = request.args.get("token")
    if token:
        return hmac.compare_digest(token.encode(), job["download_token"].encode())
    user = current_api_user(required=False)
    return user is not None and user["id"] == job["user_id"]
