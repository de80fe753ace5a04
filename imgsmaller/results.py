"""Results and downloads, for the API and the web pages alike: a progress key's result, who may
download an image, streaming it (or a presigned redirect), and a zip of several.

Views pass in plain values and get values or Flask responses back; job_store.py reads the rows.
"""

import tempfile
import zipfile

from flask import redirect, send_file

from . import job_store
from .db import utcnow
from .errors import GoneError, NotFoundError

MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}
MAX_ZIP_IMAGES = 100


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
        stored = open_file()  # opened first, so a concurrent deletion cannot turn into a 500
    except FileNotFoundError:
        raise missing_error from None
    response = send_file(stored.file, mimetype=MIME_TYPES[image_format], max_age=0, **options)
    response.content_length = stored.size
    return response


def send_result(storage, job):
    """The result of a done job as an attachment named after the upload: streamed by the app, or,
    with STORAGE_DOWNLOAD=redirect, a 302 to a presigned URL signed for this response only.
    Either way the caller has already checked who may download it and that it has not expired."""
    if storage.redirects:
        url = storage.result_url(job["id"], download_name(job), MIME_TYPES[job["format"]])
        response = redirect(url, 302)
        response.headers["Cache-Control"] = "no-store"  # the link is personal and short-lived
        return response
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
