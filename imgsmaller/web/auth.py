"""Sign-up, log-in and log-out: email and password (Werkzeug scrypt), the log-in and sign-up throttles."""

import functools
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError
from werkzeug.security import check_password_hash, generate_password_hash

from .. import accounts, web_security
from ..flask_db import get_db
from .pages import (
    form_error,
    form_expired,
    login_required,
    never_cache_pages,
    pop_once,
    session_user,
    show_once,
    start_session,
)

bp = Blueprint("auth", __name__)
bp.after_request(never_cache_pages)
bp.register_error_handler(CSRFError, form_expired)  # HTML for a person's form

MAX_PASSWORD_LENGTH = accounts.MAX_PASSWORD_LENGTH
BAD_LOGIN = "Wrong email or password."  # the same text for an unknown email and a wrong password


def safe_next(target):
    """Only a path on this site; anything else (//evil.test, https://...) goes to the Dashboard."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("dashboard.show_dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("dashboard.show_dashboard")
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


@bp.route("/signup", methods=["GET", "POST"])
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
        accounts.check_new_password(password)
    except accounts.AccountError as error:
        return form_error("signup.html", email=email, error=error.message)
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
    show_once("signup_key", key)  # post/redirect/get: a reload shows the page, never signs up again
    return redirect(url_for("auth.welcome"))


@bp.get("/welcome")
@login_required
def welcome():
    """The new account's key, shown exactly once; afterwards this page sends you to the Dashboard."""
    key = pop_once("signup_key")
    if key is None:
        return redirect(url_for("dashboard.show_dashboard"))
    return render_template("welcome.html", new_key=key)


@bp.route("/login", methods=["GET", "POST"])
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


@bp.post("/logout")
def log_out():
    user = session_user()
    if user is not None:
        accounts.end_sessions(get_db(), user["id"])
    session.clear()
    return redirect(url_for("compressor.show_compressor"))
