"""The public JSON API (docs/api.md): /api/v1/info, /api/v1/compress, /result/<key>, /download/<id>,
and its OpenAPI document at /api/v1/openapi.json (imgsmaller/openapi.json).

Thin views: authenticate, call the service layer, return JSON. Every answer to a
request with a valid key, errors included, carries that account's quota headers.
"""

import copy
import functools
import hmac
import json
import pathlib

from flask import Blueprint, current_app, make_response, request
from werkzeug.exceptions import HTTPException

from . import results, service
from .auth import add_rate_limit_headers, authenticate, authenticate_with_quota
from .db import utcnow
from .errors import NotFoundError, ServiceError, error_response
from .flask_db import get_db
from .idempotency import REPLAYED_HEADER
from .params import INPUTS_LISTED, OUTPUTS
from .pool import current_runner
from .quota import quota_status
from .waits import current_waiter

OPENAPI_PATH = pathlib.Path(__file__).with_name("openapi.json")

bp = Blueprint("api", __name__)


def base_url():
    return service.base_url(request, current_app.config)


def current_quota(db, user):
    return quota_status(db, user, current_app.config["DAILY_LIMIT"], utcnow())


def answer_with_quota(user, quota, produce):
    """`produce()` -> (response, quota after); its errors too are answered with the quota headers."""
    try:
        response, quota = produce()
    except (ServiceError, HTTPException) as error:
        response = error_response(error)
    return add_rate_limit_headers(response, quota)


def key_required(view):
    """Authenticate the API key (401), then call view(user, quota, ...) -> (response, quota)."""
    @functools.wraps(view)
    def wrapped(**kwargs):
        db = get_db()
        user, quota = authenticate_with_quota(db, request, current_app.config["DAILY_LIMIT"], utcnow())
        return answer_with_quota(user, quota, lambda: view(user, quota, **kwargs))

    return wrapped


@bp.get("/api/v1/info")
@key_required
def get_info(user, quota):
    return make_response({
        "endpoint": f"{base_url()}/api/v1/compress",
        "remaining_today": quota.remaining,
        "reset_in_seconds": quota.reset_in_seconds,
        "limit": quota.limit,
        "supported_input": list(INPUTS_LISTED),
        "supported_output": list(OUTPUTS),
    }), quota


@bp.post("/api/v1/compress")
@key_required
def compress_image(user, quota):
    accepted = service.accept_and_wait(
        get_db(), current_runner(current_app), current_waiter(current_app), request, user, quota, current_app.config)
    job, warnings = accepted.job, accepted.warnings
    result_url = f"{base_url()}/result/{job['progress_key']}"
    if accepted.ended is not None:  # `wait`, and the job ended in time: the /result body, and where it stays
        body = {**result_body(accepted.ended), "progress_key": job["progress_key"], "result_url": result_url}
        if warnings:  # the request's ignored fields, after the result's own warnings
            body["warnings"] = [*body.get("warnings", []), *warnings]
        return make_response(body), accepted.quota
    body = {
        "queued": True,
        "progress_key": job["progress_key"],
        "result_url": result_url,
        "download_url_template": f"{base_url()}/download/{{imageId}}",
    }
    if warnings:  # only then: the hosted service's 202 has exactly the four fields above
        body["warnings"] = warnings
    response = make_response(body, 202)
    if accepted.replayed:  # the first answer to this Idempotency-Key, again (never waited for: poll result_url)
        response.headers[REPLAYED_HEADER] = "true"
    return response, accepted.quota


@bp.get("/result/<progress_key>")
def get_result(progress_key):
    return result_body(results.get_result(get_db(), progress_key))


def result_body(view):
    return view.answer(base_url())


@bp.get("/api/v1/openapi.json")
def get_openapi():
    """The hand-written document, with `servers` naming this server (no key needed)."""
    document = copy.deepcopy(openapi_document())
    document["servers"] = [{"url": base_url(), "description": "This server"}]
    return document


@functools.cache
def openapi_document():
    return json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


@bp.get("/download/<int:image_id>")
def download_image(image_id):
    """The result link's token, or the owner's API key; anyone else must not learn the id exists."""
    db, storage = get_db(), current_runner(current_app).storage
    token = request.args.get("token")
    if token:
        def token_matches(job):
            return hmac.compare_digest(token.encode(), job["download_token"].encode())

        return results.send_result(storage, results.find_download(db, image_id, token_matches))
    user = authenticate(db, request, required=False)
    if user is None:
        raise NotFoundError("No such image.")

    def send():
        job = results.find_download(db, image_id, lambda job: job["user_id"] == user["id"])
        return results.send_result(storage, job), current_quota(db, user)

    return answer_with_quota(user, current_quota(db, user), send)
