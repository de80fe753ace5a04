"""What every page shares: the logged-in account, log-in required, template helpers, cache rules."""

import functools

from flask import current_app, g, redirect, render_template, request, session, url_for

from .. import accounts
from ..errors import AuthenticationError
from ..flask_db import get_db


def session_user():
    """The account of the session cookie, or None (a deleted account ends the session)."""
    if "session_user" not in g:  # a per-request cache, written and read only here
        user_id = session.get("user_id")
        user = accounts.get_user(get_db(), user_id) if user_id is not None else None
        if user is not None and session.get("session_version") != user["session_version"]:
            user = None  # logged out elsewhere: a copied cookie must not outlive log-out
        if user_id is not None and user is None:
            session.clear()
        g.session_user = user
    return g.session_user


def forget_session_user():
    """Read the account again on next use (after changing it)."""
    g.pop("session_user", None)


def start_session(user_id):
    """A fresh session for this account: nothing (CSRF token included) survives from before log-in."""
    session.clear()
    session["user_id"] = user_id
    session["session_version"] = accounts.get_user(get_db(), user_id)["session_version"]
    session.permanent = True
    forget_session_user()


def show_once(name, value):
    """Keep a value (a new API key) for the next page only: post/redirect/get without a second POST."""
    session[f"once_{name}"] = value


def pop_once(name):
    """The value `show_once` kept, removed from the session as it is read: a reload no longer shows it."""
    return session.pop(f"once_{name}", None)


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if session_user() is None:
            return redirect(url_for("auth.log_in", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapped


def require_web_user():
    """The session's account for the compressor's JSON endpoints; 401 JSON when logged out."""
    user = session_user()
    if user is None:
        raise AuthenticationError("Log in to compress images: your session has ended or you are not logged in.")
    return user


def template_globals():
    return {"current_user": session_user, "signup_open": current_app.config["SIGNUP_OPEN"]}


def format_filesize(value):
    if value is None:
        return "–"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / (1024 * 1024):.2f} MB"


def never_cache_pages(response):
    # Pages carry CSRF tokens and, once, a full API key: no shared or back-button copies.
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def form_expired(error):
    return render_template("message.html", title="This form has expired",
                           message="The page was open too long or came from somewhere else. "
                                   "Go back, reload the page and try again."), 400


def form_error(template, status=400, **context):
    return render_template(template, **context), status
