"""The exception family every part of the service raises, and the one error renderer.

The exception classes use only the standard library, so the pure engine
(`imgsmaller.engine`) and the fetcher can raise them without importing Flask.
Each carries an HTTP status and a public message; the message is what the
client sees, so it must never contain secrets, paths or tracebacks. Errors are
JSON `{"message": ...}` (the contract), except for a browser navigating to a page:
it gets the same message as a small HTML page (`templates/error.html`).
"""

import logging

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error with a public message; subclasses fix the status."""

    status = 400
    message = "Bad request"

    def __init__(self, message=None, *, headers=None):
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.headers = headers or {}


class AuthenticationError(ServiceError):
    status = 401
    message = "Missing or invalid API key."


class ForbiddenError(ServiceError):
    status = 403
    message = "Forbidden."


class DomainNotSetError(ForbiddenError):
    # Exact text fixed by the hosted service's contract (docs/api.md).
    message = "No allowed domain set. Please set your allowed domain in dashboard."


class DomainNotAllowedError(ForbiddenError):
    message = "The file_url host is not your allowed domain or one of its subdomains."


class NotFoundError(ServiceError):
    status = 404
    message = "Not found."


class GoneError(ServiceError):
    status = 410
    message = "This result has expired and was deleted."


class PayloadTooLargeError(ServiceError):
    status = 413
    message = "File too large."

    @classmethod
    def for_limit(cls, max_bytes):
        """ "File too large: the limit is 10 MB." (MiB, no trailing zeros: 2.5 MB; under 0.01 MB in bytes)."""
        megabytes = f"{max_bytes / (1024 * 1024):.2f}".rstrip("0").rstrip(".")
        limit = f"{megabytes} MB" if megabytes != "0" else f"{max_bytes} bytes"
        return cls(f"File too large: the limit is {limit}.")


class UnsupportedImageError(ServiceError):
    status = 415
    message = "Not an image, or an image type that is not supported."


class InvalidRequestError(ServiceError):
    """A request that is well-formed HTTP but whose fields are wrong (422)."""

    status = 422
    message = "Invalid request."


class InvalidImageError(InvalidRequestError):
    message = "The image is invalid, corrupt or truncated."


class FetchError(InvalidRequestError):
    """file_url could not be fetched: bad URL, internal address, unreachable host."""

    message = "The file_url could not be fetched."


class TargetUnreachableError(InvalidRequestError):
    message = "The target size cannot be reached for this image."


class QuotaExceededError(ServiceError):
    status = 429
    message = "Daily limit exceeded."


class TooManyRequestsError(ServiceError):
    """A per-account limit other than the daily one (concurrent fetches, refused images); carries Retry-After."""

    status = 429
    message = "Too many requests."


class ServiceUnavailableError(ServiceError):
    status = 503
    message = "Storage is full or not writable, so the image was not accepted. Try again later."


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database cannot be reached, or did not answer in time (the cause is in the server log)."""

    message = "The database is not available right now. Try again in a moment."


# Machine endpoints: always JSON, whatever the Accept header says.
JSON_ONLY_PREFIXES = ("/api/", "/result/", "/app/", "/healthz", "/readyz", "/metrics")
ERROR_TITLES = {404: "Page not found", 405: "Not allowed here", 410: "This link has expired",
                500: "Something went wrong"}


def error_response(error):
    """The response for one of our errors or a Werkzeug HTTP error: the one renderer."""
    # Imported here so the exception classes above stay free of Flask.
    from flask import current_app, request
    from werkzeug.exceptions import HTTPException

    if isinstance(error, ServiceError):
        log.info("%s %s -> %s %s", request.method, request.path, error.status, error.message)
        status, message, headers = error.status, error.message, error.headers
    elif isinstance(error, HTTPException) and error.code == 413:
        # A body over MAX_CONTENT_LENGTH: the limit a client can act on is the image's.
        limit_mb = current_app.config.get("UPLOAD_MAX_MB")
        too_large = PayloadTooLargeError.for_limit(int(limit_mb * 1024 * 1024)) if limit_mb else PayloadTooLargeError()
        status, message, headers = 413, too_large.message, {}
    elif isinstance(error, HTTPException):
        headers = dict(error.get_response().headers)
        headers.pop("Content-Type", None)
        headers.pop("Content-Length", None)
        status, message = error.code, error.description or error.name
    else:
        log.exception("Unhandled error on %s %s", request.method, request.path)
        status, message, headers = 500, "Internal server error", {}
    response = (wants_html_page() and html_error_page(status, message)) or json_error(message)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name] = value
    return response


def wants_html_page():
    """A browser navigating to a page: prefers text/html over JSON, and not a machine endpoint."""
    from flask import request

    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"] and not request.path.startswith(JSON_ONLY_PREFIXES)


def json_error(message):
    from flask import jsonify

    return jsonify(message=message)


def html_error_page(status, message):
    """The error as a page in the site's style, or None if even that fails (then JSON is sent)."""
    from flask import make_response, render_template

    try:
        title = ERROR_TITLES.get(status, "This did not work")
        return make_response(render_template("error.html", title=title, status=status, message=message))
    except Exception:  # a broken database or template must not hide the original error
        log.exception("Cannot render the HTML error page; answering JSON")
        return None


def init_app(app):
    """Render every error, ours, Werkzeug's and unexpected ones, with `error_response`."""
    from werkzeug.exceptions import HTTPException

    app.register_error_handler(ServiceError, error_response)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, error_response)
