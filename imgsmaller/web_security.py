"""Security of the web pages: CSRF, session cookie flags, security headers, log-in throttling.

Knows nothing about accounts or pages (imports Flask and Flask-WTF only); the
dashboard asks it for the throttle and the CSRF protection covers every POST of
the app except the API-key blueprint, which cookies cannot authenticate.
"""

import math
import threading
import time
from collections import deque

from flask import has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

# Pages load scripts, styles, fonts and images from the app itself only: no inline
# script or style, no CDN. `blob:` lets the compressor show a picked file before upload.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# Images served back to their owner (originals, previews) must never run as a document.
IMAGE_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked Secure whenever the request came over https.

    SESSION_COOKIE_SECURE is also set when PUBLIC_URL is https, so a proxy that
    hides the scheme cannot downgrade the cookie.
    """

    def get_cookie_secure(self, app):
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))


class LoginThrottle:
    """Failed log-ins per key (an email, a client address) in a sliding window, in memory.

    Per process: a server started with several processes allows each of them
    `max_failures`. That still bounds guessing to a few dozen passwords per
    window, which is what the throttle is for.
    """

    MAX_KEYS = 50_000  # beyond this, forget the oldest keys (bounded memory under a flood)

    def __init__(self, max_failures, window_s, clock=time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures = {}
        self._lock = threading.Lock()

    def _recent(self, key, now):
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, *keys):
        """Seconds until every key may try again; 0 when none is throttled."""
        now = self.clock()
        wait = 0
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                if failures is not None and len(failures) >= self.max_failures:
                    wait = max(wait, failures[-self.max_failures] + self.window_s - now)
        return math.ceil(wait) if wait > 0 else 0

    def record_failure(self, *keys):
        now = self.clock()
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                if failures is None:
                    if len(self._failures) >= self.MAX_KEYS:
                        self._failures.pop(next(iter(self._failures)))
                    failures = self._failures[key] = deque()
                failures.append(now)
                while len(failures) > self.max_failures:
                    failures.popleft()

    def reset(self, *keys):
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def add_security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # same-origin keeps the Referer that Flask-WTF's https check needs, and keeps
    # download tokens in URLs from leaking to other sites.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def init_app(app, *, exempt=()):
    """CSRF on every state-changing request except the `exempt` blueprints; cookies; headers; throttle."""
    # The token lives as long as the session: a compressor page left open for
    # hours must still be able to upload.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf = CSRFProtect(app)
    for blueprint in exempt:
        csrf.exempt(blueprint)

    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    public_url = app.config.get("PUBLIC_URL") or ""
    app.config["SESSION_COOKIE_SECURE"] = public_url.startswith("https://")
    app.session_interface = SessionInterface()

    app.after_request(add_security_headers)
    app.extensions["imgsmaller.login_throttle"] = LoginThrottle(
        app.config["LOGIN_MAX_FAILURES"], app.config["LOGIN_LOCKOUT_S"]
    )
    return csrf
