"""The Dashboard: the key's prefix and rotation, the password, the Allowed Domain, usage, a 30-day chart, recent jobs,
the webhook secret (shown, rotatable) and recent webhook deliveries.

Every form answers with a redirect (post/redirect/get), so reloading never repeats it;
a rotated key rides to the next page as a one-time session value (`pages.show_once`).
"""

from datetime import UTC, datetime

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError

from .. import accounts, job_store, web_security, webhooks
from ..db import utcnow
from ..domains import InvalidDomainError, normalize_allowed_domain
from ..flask_db import get_db
from ..quota import quota_status, usage_history
from .auth import password_matches
from .pages import form_expired, login_required, never_cache_pages, pop_once, session_user, show_once, start_session

bp = Blueprint("dashboard", __name__)
bp.after_request(never_cache_pages)
bp.register_error_handler(CSRFError, form_expired)  # HTML for a person's form

RECENT_JOBS = 20
CHART_DAYS = 30


@bp.get("/dashboard")
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
        "jobs": [job_summary(job_store.view_job(row, now))
                 for row in job_store.recent_jobs(db, user["id"], RECENT_JOBS)],
        "domain_value": user["allowed_domain"] or "",
        "webhook_secret": user["webhook_secret"] or accounts.webhook_secret(db, user["id"]),
        "deliveries": [delivery_summary(row) for row in webhooks.recent_deliveries(db, user["id"])],
        "new_key": pop_once("rotated_key"),
        **extra,
    }
    return render_template("dashboard.html", **context), status


@bp.post("/dashboard/key")
@login_required
def rotate_key():
    key = accounts.rotate_api_key(get_db(), session_user()["id"])
    show_once("rotated_key", key)  # shown by the next GET, once; a reload there rotates nothing
    return redirect(url_for("dashboard.show_dashboard", _anchor="key-title"))


@bp.post("/dashboard/webhook-secret")
@login_required
def rotate_webhook_secret():
    accounts.rotate_webhook_secret(get_db(), session_user()["id"])
    flash("Webhook secret rotated: every delivery from now on is signed with the new secret only.")
    return redirect(url_for("dashboard.show_dashboard", _anchor="webhooks-title"))


@bp.post("/dashboard/password")
@login_required
def change_password():
    """A new password, given the current one; every other session of the account ends, this one stays."""
    user = session_user()
    new_password = request.form.get("new_password", "")
    # A wrong current password counts as a failed log-in: a stolen session cannot guess it freely.
    attempt = current_app.extensions["imgsmaller.throttle"].begin_login(get_db(), user["email"], request.remote_addr)
    if attempt.retry_after:
        return web_security.throttled(render_dashboard(password_error=attempt.message), attempt.retry_after)
    if not password_matches(user, request.form.get("current_password", "")[:accounts.MAX_PASSWORD_LENGTH]):
        return render_dashboard(400, password_error="The current password is wrong.")
    attempt.succeeded()
    if new_password != request.form.get("new_password_again", ""):
        return render_dashboard(400, password_error="The two new passwords differ.")
    try:
        accounts.set_password(get_db(), user["id"], new_password)
    except accounts.AccountError as error:
        return render_dashboard(400, password_error=error.message)
    start_session(user["id"])  # a renewed session at the new version: the others no longer match
    flash("Password changed. Every other session of this account is logged out.")
    return redirect(url_for("dashboard.show_dashboard"))


@bp.post("/dashboard/domain")
@login_required
def set_domain():
    user = session_user()
    if "clear" in request.form:
        accounts.set_allowed_domain(get_db(), user["id"], None)
        flash("Allowed Domain removed: file_url requests are refused until you set one.")
        return redirect(url_for("dashboard.show_dashboard"))
    text = request.form.get("allowed_domain", "")
    try:
        domain = normalize_allowed_domain(text)  # exactly the CLI's validation
    except InvalidDomainError as error:
        return render_dashboard(400, domain_value=text, domain_error=error.message)
    accounts.set_allowed_domain(get_db(), user["id"], domain)
    flash(f"Allowed Domain set to {domain}: file_url may fetch from it and its subdomains.")
    return redirect(url_for("dashboard.show_dashboard"))


def duration_text(seconds):
    hours, minutes = divmod(max(0, seconds) // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{max(1, minutes)} min"


def job_summary(view):
    """One row of the recent-jobs table, from the job's public view."""
    job = view.job
    return {
        "id": job["id"],
        "created": job["created_at"].replace("T", " ").rstrip("Z"),
        "name": job["filename"] or "image",
        "original_bytes": job["original_bytes"],
        "original_format": job["original_format"],
        "bytes": job["bytes"],
        "format": job["format"] or job["output"],
        "saved_percent": view.saved_percent,
        "status": view.status,
        "message": job["message"],
        "expired": view.expired,
        "download": (url_for("api.download_image", image_id=job["id"], token=job["download_token"])
                     if view.downloadable else None),
    }


def delivery_summary(row):
    """One row of the webhook deliveries table."""
    def when(text):
        return text.replace("T", " ").rstrip("Z") if text else None

    return {
        "image_id": row["job_id"],
        "created": when(row["created_at"]),
        "url": row["url"],
        "status": row["status"],
        "attempts": row["attempts"],
        "response_code": row["response_code"],
        "error": row["error"],
        "next_attempt": when(row["next_attempt_at"]) if row["status"] == "pending" else None,
    }


def usage_chart(history, width=900, height=150):
    """Bars for the last days' accepted requests, laid out for an inline SVG (no script, no library)."""
    top = max([count for _, count in history] + [1])
    plot_top, plot_bottom = 4, height - 1
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
    labels = []  # first, middle and last day, laid out in HTML under the chart: legible at any width
    for index in (0, len(history) // 2, len(history) - 1):
        day = datetime.strptime(history[index][0], "%Y-%m-%d").replace(tzinfo=UTC)
        labels.append({"text": day.strftime("%b %d").replace(" 0", " ")})
    return {"width": width, "height": height, "bars": bars, "labels": labels, "top": top,
            "plot_top": plot_top, "plot_bottom": plot_bottom, "total": sum(c for _, c in history)}
