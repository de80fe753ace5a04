"""Security of the web pages: CSRF, session cookie flags, security headers, the throttles' 429.

Knows nothing about accounts or pages (imports Flask, Flask-WTF and `throttle`); the
pages ask `app.extensions["imgsmaller.throttle"]` (a `throttle.Throttle`, shared by every
process through the database) before a log-in or sign-up, and the CSRF protection covers
every POST of the app except the API-key blueprint, which cookies cannot authenticate.
"""

from flask import has_request_context, make_response, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from .throttle import Throttle

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

    def open_session(self, app, request):
        if "HTTP_COOKIE" not in request.environ:  # nothing to read: skip parsing the (absent) cookies
            return self.session_class() if app.secret_key else None
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        if not (session or session.modified or session.accessed):
            return  # Flask's own would do nothing either, after reading seven settings (issue 11)
        super().save_session(app, session, response)

    def get_signing_serializer(self, app):
        """Flask's serializer, built once per key set rather than on every request (it derives
        its signer's settings each time: ~6 % of a GET /api/v1/info, issue 11)."""
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = getattr(self, "_serializer", None)
        if cached is None or cached[0] != keys:
            cached = self._serializer = (keys, super().get_signing_serializer(app))
        return cached[1]


def throttled(rendered, retry_after):
    """A rendered page (or `(page, status)`) as a 429 carrying Retry-After, for a refused `throttle.Attempt`."""
    response = make_response(rendered)
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


# same-origin keeps the Referer that Flask-WTF's https check needs, and keeps
# download tokens in URLs from leaking to other sites.
EVERY_RESPONSE_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"))
PAGE_HEADERS = (("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("X-Frame-Options", "DENY"))


def add_missing_headers(headers, pairs):
    """`headers.setdefault` for each (name, value), in one pass: werkzeug's setdefault scans the
    list twice and raises and catches a KeyError per missing name (~10 us for five, issue 11)."""
    present = {name.lower() for name, _ in headers}
    for name, value in pairs:
        if name.lower() not in present:
            headers.add(name, value)


def add_security_headers(response):
    add_missing_headers(response.headers, EVERY_RESPONSE_HEADERS)
    if response.mimetype == "text/html":
        add_missing_headers(response.headers, PAGE_HEADERS)
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
    app.extensions["imgsmaller.throttle"] = Throttle.from_config(app.config)
    return csrf
