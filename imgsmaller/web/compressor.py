"""The compressor: the page at `/` and the JSON and image endpoints its script calls.

The endpoints are the API's compress, authenticated by the session (and its CSRF
token) instead of a key, so quota, validation and error messages are the API's.
"""

from flask import Blueprint, current_app, make_response, render_template, request, url_for

from .. import results, service, web_security
from ..auth import add_rate_limit_headers
from ..db import utcnow
from ..engine.resize import MAX_SIDE
from ..errors import NotFoundError
from ..flask_db import get_db
from ..idempotency import REPLAYED_HEADER
from ..pool import current_runner
from ..quota import quota_status
from .pages import never_cache_pages, require_web_user, session_user

bp = Blueprint("compressor", __name__)
bp.after_request(never_cache_pages)

OUTPUT_CHOICES = [("original", "Same as input"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WebP"), ("avif", "AVIF")]
METADATA_CHOICES = [("none", "Remove"), ("copyright", "Copyright, date"), ("all", "All but location"),
                    ("all_with_location", "All, with location")]


@bp.get("/")
def show_compressor():
    user = session_user()
    quota = None
    if user is not None:
        quota = quota_status(get_db(), user, current_app.config["DAILY_LIMIT"], utcnow())
    max_mb = current_app.config["UPLOAD_MAX_MB"]
    return render_template("compress.html", quota=quota, outputs=OUTPUT_CHOICES, metadata_choices=METADATA_CHOICES,
                           max_side=MAX_SIDE, max_bytes=int(max_mb * 1024 * 1024), max_mb=f"{max_mb:g}")


@bp.post("/app/compress")
def compress_upload():
    user = require_web_user()
    db = get_db()
    quota = quota_status(db, user, current_app.config["DAILY_LIMIT"], utcnow())
    accepted = service.accept_compress_request(
        db, current_runner(current_app), request, user, quota, current_app.config)
    job, quota = accepted.job, accepted.quota
    response = make_response({
        "queued": True,
        "progress_key": job["progress_key"],
        "result_url": url_for("api.get_result", progress_key=job["progress_key"]),
        "image_id": job["id"],
        "remaining_today": quota.remaining,
        "warnings": accepted.warnings,
    }, 202)
    if accepted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return add_rate_limit_headers(response, quota)


@bp.get("/app/images/<int:image_id>/<any(original, result):which>")
def get_image(image_id, which):
    """The original upload or the result, inline, for the comparison slider."""
    job = results.find_owned_job(get_db(), image_id, require_web_user())
    storage = current_runner(current_app).storage
    if which == "original":
        open_file, fmt = (lambda: storage.open_input(job["id"])), job["original_format"]
    else:
        if job["status"] != "done":
            raise NotFoundError("This image is not ready yet.")
        open_file, fmt = (lambda: storage.open_result(job["id"])), job["format"]
    response = results.send_stored_image(open_file, fmt, NotFoundError("This image is no longer stored."))
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Security-Policy"] = web_security.IMAGE_POLICY
    return response


@bp.get("/app/download-all")
def download_all():
    """The finished results among ?id=... as one zip."""
    user = require_web_user()
    return results.zip_results(get_db(), current_runner(current_app).storage, user,
                               request.args.getlist("id", type=int))
