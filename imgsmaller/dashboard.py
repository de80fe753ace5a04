"""The web pages: sign-up, log-in, the Dashboard, the compressor at `/` and the API docs at `/docs`.

Two thin blueprints. `pages` renders HTML forms for a session-authenticated
person; `web` holds the JSON and image endpoints the compressor's script calls,
which reuse the API's own pipeline (api.read_compress_request, engine.probe,
api.queue_job), so quota, validation and error messages are the API's. Errors of
`web` are raised as errors.py exceptions and rendered by its one JSON renderer.
Must not touch the engine's internals, storage paths other than through the job
runner's Storage, or API keys beyond creating and rotating them through accounts.
"""

import functools
import json
import logging
import os
import shlex
import tempfile
import zipfile
from datetime import datetime, timezone
from urllib.parse import urlsplit

from flask import (Blueprint, current_app, flash, g, redirect, render_template, request,
                   send_file, session, url_for)
from flask_wtf.csrf import CSRFError
from werkzeug.security import check_password_hash, generate_password_hash

from . import accounts, api, web_security
from .db import get_db, to_iso, utcnow
from .domains import InvalidDomainError, normalize_allowed_domain
from .errors import AuthenticationError, NotFoundError
from .params import OUTPUTS
from .quota import quota_status, usage_history

log = logging.getLogger(__name__)

pages = Blueprint("pages", __name__)
web = Blueprint("web", __name__)

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # scrypt hashes any length; this only bounds the work per request
BAD_LOGIN = "Wrong email or password."  # the same text for an unknown email and a wrong password
RECENT_JOBS = 20
CHART_DAYS = 30
MAX_ZIP_IMAGES = 100
OUTPUT_CHOICES = [("original", "Same as input"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WebP"), ("avif", "AVIF")]


# -- who is logged in ----------------------------------------------------------


def session_user():
    """The account of the session cookie, or None (a deleted account ends the session)."""
    if "session_user" not in g:
        user_id = session.get("user_id")
        user = accounts.get_user(get_db(), user_id) if user_id is not None else None
        if user is not None and session.get("session_version") != user["session_version"]:
            user = None  # logged out elsewhere: a copied cookie must not outlive log-out
        if user_id is not None and user is None:
            session.clear()
        g.session_user = user
    return g.session_user


def start_session(user_id):
    """A fresh session for this account: nothing (CSRF token included) survives from before log-in."""
    session.clear()
    session["user_id"] = user_id
    session["session_version"] = accounts.get_user(get_db(), user_id)["session_version"]
    session.permanent = True


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if session_user() is None:
            return redirect(url_for("pages.log_in", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def safe_next(target):
    """Only a path on this site; anything else (//evil.test, https://...) goes to the Dashboard."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.show_dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("pages.show_dashboard")
    return target


@functools.cache
def _dummy_password_hash():
    # Checked against when the email is unknown, so both failures cost one scrypt.
    return generate_password_hash("not a real password", method="scrypt")


def password_matches(user, password):
    if user is None or not user["password_hash"]:
        check_password_hash(_dummy_password_hash(), password)
        return False
    return check_password_hash(user["password_hash"], password)


# -- page helpers -----------------------------------------------------------------


@pages.app_context_processor
def template_globals():
    return {"current_user": session_user, "signup_open": current_app.config["SIGNUP_OPEN"]}


@pages.app_template_filter("filesize")
def format_filesize(value):
    if value is None:
        return "–"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / (1024 * 1024):.2f} MB"


@pages.after_request
def never_cache_pages(response):
    # Pages carry CSRF tokens and, once, a full API key: no shared or back-button copies.
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


@pages.errorhandler(CSRFError)
def form_expired(error):
    return render_template("message.html", title="This form has expired",
                           message="The page was open too long or came from somewhere else. "
                                   "Go back, reload the page and try again."), 400


def form_error(template, status=400, **context):
    return render_template(template, **context), status


# -- sign-up, log-in, log-out -------------------------------------------------------


@pages.route("/signup", methods=["GET", "POST"])
def sign_up():
    if not current_app.config["SIGNUP_OPEN"]:
        return render_template("message.html", title="Sign-up is closed",
                               message="This server does not take new sign-ups. Ask its administrator "
                                       "for an account."), 403
    if request.method == "GET":
        return render_template("signup.html", email="")
    email = request.form.get("email", "")
    password = request.form.get("password", "")
    try:
        email = accounts.normalize_email(email)
    except accounts.AccountError as error:
        return form_error("signup.html", email=email, error=error.message)
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        return form_error("signup.html", email=email,
                          error=f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters.")
    attempt = current_app.extensions["imgsmaller.throttle"].begin_signup(get_db(), request.remote_addr)
    if attempt.retry_after:
        return web_security.throttled(form_error("signup.html", 429, email=email, error=attempt.message),
                                      attempt.retry_after)
    try:
        user_id, key = accounts.create_user(get_db(), email, password=password)
    except accounts.AccountError as error:
        attempt.failed()
        return form_error("signup.html", email=email, error=error.message)
    start_session(user_id)
    return render_template("welcome.html", new_key=key)


@pages.route("/login", methods=["GET", "POST"])
def log_in():
    next_url = request.values.get("next", "")
    if request.method == "GET":
        if session_user() is not None:
            return redirect(safe_next(next_url))
        return render_template("login.html", email="", next_url=next_url)
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    # Counted as a failure from here on (atomically, in every process) until the password is right.
    attempt = current_app.extensions["imgsmaller.throttle"].begin_login(get_db(), email, request.remote_addr)
    if attempt.retry_after:
        return web_security.throttled(form_error("login.html", 429, email=email, next_url=next_url,
                                                 error=attempt.message), attempt.retry_after)
    user = accounts.get_user_by_email(get_db(), email) if email else None
    if not password_matches(user, password[:MAX_PASSWORD_LENGTH]):
        return form_error("login.html", email=email, next_url=next_url, error=BAD_LOGIN)
    attempt.succeeded()
    start_session(user["id"])
    return redirect(safe_next(next_url))


@pages.post("/logout")
def log_out():
    user = session_user()
    if user is not None:
        accounts.end_sessions(get_db(), user["id"])
    session.clear()
    return redirect(url_for("pages.show_compressor"))


# -- the Dashboard --------------------------------------------------------------------


@pages.get("/dashboard")
@login_required
def show_dashboard():
    return render_dashboard()


def render_dashboard(status=200, **extra):
    user = session_user()
    db = get_db()
    now = utcnow()
    quota = quota_status(db, user, current_app.config["DAILY_LIMIT"], now)
    history = usage_history(db, user["id"], CHART_DAYS, now)
    context = {
        "user": user,
        "quota": quota,
        "reset_text": duration_text(quota.reset_in_seconds),
        "chart": usage_chart(history),
        "jobs": recent_jobs(db, user["id"], now),
        "domain_value": user["allowed_domain"] or "",
        **extra,
    }
    return render_template("dashboard.html", **context), status


@pages.post("/dashboard/key")
@login_required
def rotate_key():
    key = accounts.rotate_api_key(get_db(), session_user()["id"])
    g.pop("session_user")  # show the new prefix
    return render_dashboard(new_key=key)


@pages.post("/dashboard/domain")
@login_required
def set_domain():
    user = session_user()
    if "clear" in request.form:
        accounts.set_allowed_domain(get_db(), user["id"], None)
        flash("Allowed Domain removed: file_url requests are refused until you set one.")
        return redirect(url_for("pages.show_dashboard"))
    text = request.form.get("allowed_domain", "")
    try:
        domain = normalize_allowed_domain(text)  # exactly the CLI's validation
    except InvalidDomainError as error:
        return render_dashboard(400, domain_value=text, domain_error=error.message)
    accounts.set_allowed_domain(get_db(), user["id"], domain)
    flash(f"Allowed Domain set to {domain}: file_url may fetch from it and its subdomains.")
    return redirect(url_for("pages.show_dashboard"))


def duration_text(seconds):
    hours, minutes = divmod(max(0, seconds) // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{max(1, minutes)} min"


def recent_jobs(db, user_id, now):
    rows = db.execute(
        "SELECT * FROM jobs WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, RECENT_JOBS)
    ).fetchall()
    return [job_summary(row, now) for row in rows]


def job_summary(job, now):
    live = job["status"] == "done" and not job["files_deleted"] and job["expires_at"] > to_iso(now)
    saved = None
    if job["status"] == "done" and job["original_bytes"]:
        saved = round(100 * (1 - job["bytes"] / job["original_bytes"]), 1)
    return {
        "id": job["id"],
        "created": job["created_at"].replace("T", " ").rstrip("Z"),
        "name": job["filename"] or "image",
        "original_bytes": job["original_bytes"],
        "original_format": job["original_format"],
        "bytes": job["bytes"],
        "format": job["format"] or job["output"],
        "saved_percent": saved,
        "status": {"queued": "processing", "running": "processing"}.get(job["status"], job["status"]),
        "message": job["message"],
        "expired": job["status"] == "done" and not live,
        "download": url_for("api.download_image", image_id=job["id"], token=job["download_token"]) if live else None,
    }


def usage_chart(history, width=900, height=170):
    """Bars for the last days' accepted requests, laid out for an inline SVG (no script, no library)."""
    top = max([count for _, count in history] + [1])
    plot_top, plot_bottom = 14, height - 22
    slot = width / len(history)
    bars = []
    for index, (day, count) in enumerate(history):
        bar_height = (plot_bottom - plot_top) * count / top
        bars.append({
            "x": round(index * slot + slot * 0.15, 1),
            "y": round(plot_bottom - bar_height, 1),
            "width": round(slot * 0.7, 1),
            "height": round(bar_height, 1),
            "count": count,
            "day": day,
            "today": index == len(history) - 1,
        })
    labels = []
    for index, anchor in ((0, "start"), (len(history) // 2, "middle"), (len(history) - 1, "end")):
        day = datetime.strptime(history[index][0], "%Y-%m-%d").replace(tzinfo=timezone.utc)
        x = {"start": index * slot, "middle": index * slot + slot / 2, "end": (index + 1) * slot}[anchor]
        labels.append({"x": round(x, 1), "anchor": anchor, "text": day.strftime("%b %d").replace(" 0", " ")})
    return {"width": width, "height": height, "bars": bars, "labels": labels, "top": top,
            "plot_top": plot_top, "plot_bottom": plot_bottom, "total": sum(c for _, c in history)}


# -- the compressor and the docs --------------------------------------------------------


@pages.get("/")
def show_compressor():
    user = session_user()
    quota = None
    if user is not None:
        quota = quota_status(get_db(), user, current_app.config["DAILY_LIMIT"], utcnow())
    max_mb = current_app.config["UPLOAD_MAX_MB"]
    return render_template("compress.html", quota=quota, outputs=OUTPUT_CHOICES,
                           max_bytes=int(max_mb * 1024 * 1024), max_mb=f"{max_mb:g}")


@pages.get("/docs")
def show_docs():
    user = session_user()
    config = current_app.config
    base = api.base_url()
    key_prefix = user["key_prefix"] if user else None
    return render_template(
        "docs.html",
        base=base,
        key_prefix=key_prefix,
        examples=docs_examples(base, key_prefix, user["allowed_domain"] if user else None),
        daily_limit=config["DAILY_LIMIT"],
        upload_max_mb=f"{config['UPLOAD_MAX_MB']:g}",
        ttl_hours=f"{config['RESULT_TTL_HOURS']:g}",
        outputs=OUTPUTS,
    )


def docs_examples(base, key_prefix, domain):
    """The curl commands of /docs, ready to paste: this server's URL, the reader's key in $IMGSMALLER_API_KEY."""
    def url(path):
        return shlex.quote(base + path)  # base may come from the Host header: never paste it unquoted

    key = '-H "X-API-Key: $IMGSMALLER_API_KEY"'
    file_url = json.dumps({"file_url": f"https://{domain or 'example.com'}/images/hero.jpg", "target_size": "50KB"})
    return {
        "key": f"export IMGSMALLER_API_KEY='{key_prefix or 'isk_'}…'   # paste your full key here",
        "quick": (
            f"result_url=$(curl -s {key} \\\n  -F file=@photo.jpg -F target_size=200KB -F output=webp \\\n"
            f"  {url('/api/v1/compress')} | jq -r .result_url)\n"
            'until [ "$(curl -s "$result_url" | jq -r .status)" != processing ]; do sleep 1; done\n'
            'curl -s -o photo-small.webp "$(curl -s "$result_url" | jq -r .download)"'
        ),
        "info": f"curl -s {key} {url('/api/v1/info')}",
        "multipart": f"curl -s {key} \\\n  -F file=@photo.jpg -F target_size=200KB -F output=webp \\\n  {url('/api/v1/compress')}",
        # printf is a shell builtin: a big image's base64 never hits the argument length limit.
        "base64": (
            "printf '{\"file_base64\": \"%s\", \"output\": \"avif\"}' \"$(base64 -w0 logo.png)\" |\n"
            f"  curl -s {key} -H 'Content-Type: application/json' --data-binary @- \\\n"
            f"  {url('/api/v1/compress')}"
        ),
        "url": f"curl -s {key} -H 'Content-Type: application/json' \\\n  -d '{file_url}' \\\n  {url('/api/v1/compress')}",
        "result": f"curl -s {url('/result/')}PROGRESS_KEY",
        "download": f"curl -s -OJ {key} {url('/download/12345')}",
    }


# -- JSON and images for the compressor's script ---------------------------------------


def require_web_user():
    user = session_user()
    if user is None:
        raise AuthenticationError("Log in to compress images: your session has ended or you are not logged in.")
    return user


@web.post("/app/compress")
def compress_upload():
    """The API's compress, authenticated by the session (and its CSRF token) instead of a key."""
    user = require_web_user()
    g.quota = quota_status(get_db(), user, current_app.config["DAILY_LIMIT"], utcnow())
    job = api.accept_compress_request(user)
    return {
        "queued": True,
        "progress_key": job["progress_key"],
        "result_url": url_for("api.get_result", progress_key=job["progress_key"]),
        "image_id": job["id"],
        "remaining_today": g.quota.remaining,
    }, 202


def owned_job(image_id):
    """The session owner's job, else 404 for everyone (ids must not be enumerable)."""
    user = require_web_user()
    job = get_db().execute("SELECT * FROM jobs WHERE id = ? AND user_id = ?", (image_id, user["id"])).fetchone()
    if job is None:
        raise NotFoundError("No such image.")
    api.raise_if_expired(job)
    return job


@web.get("/app/images/<int:image_id>/<any(original, result):which>")
def get_image(image_id, which):
    """The original upload or the result, inline, for the comparison slider."""
    job = owned_job(image_id)
    storage = api.current_storage()
    if which == "original":
        path, fmt = storage.input_path(job["id"]), job["original_format"]
    else:
        if job["status"] != "done":
            raise NotFoundError("This image is not ready yet.")
        path, fmt = storage.result_path(job["id"]), job["format"]
    response = api.send_stored_file(path, fmt, NotFoundError("This image is no longer stored."))
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Security-Policy"] = web_security.IMAGE_POLICY
    return response


@web.get("/app/download-all")
def download_all():
    """The finished results among ?id=... as one zip (stored, not deflated: images are compressed)."""
    user = require_web_user()
    ids = request.args.getlist("id", type=int)[:MAX_ZIP_IMAGES]
    if not ids:
        raise NotFoundError("No images chosen.")
    storage = api.current_storage()
    marks = ",".join("?" * len(ids))
    jobs = get_db().execute(
        f"SELECT * FROM jobs WHERE user_id = ? AND id IN ({marks}) AND status = 'done'"
        " AND files_deleted = 0 AND expires_at > ? ORDER BY id",
        (user["id"], *ids, to_iso(utcnow())),
    ).fetchall()
    archive = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    written = 0
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        for job in jobs:
            path = storage.result_path(job["id"])
            if os.path.exists(path):
                bundle.write(path, api.download_name(job))
                written += 1
    if not written:
        archive.close()
        raise NotFoundError("None of these images is available any more.")
    archive.seek(0)
    return send_file(archive, mimetype="application/zip", as_attachment=True,
                     download_name="imgsmaller-results.zip", max_age=0)


def init_app(app):
    web_security.init_app(app, exempt=[api.bp])
    app.register_blueprint(pages)
    app.register_blueprint(web)
