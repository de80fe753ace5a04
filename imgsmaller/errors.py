"""The exception family every part of the service raises, and the one JSON renderer.

The exception classes use only the standard library, so the pure engine
(`imgsmaller.engine`) and the fetcher can raise them without importing Flask.
Each carries an HTTP status and a public message; the message is what the
client sees, so it must never contain secrets, paths or tracebacks.
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


class ServiceUnavailableError(ServiceError):
    status = 503
    message = "Storage is full or not writable, so the image was not accepted. Try again later."


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database cannot be reached, or did not answer in time (the cause is in the server log)."""

    message = "The database is not available right now. Try again in a moment."


def error_response(error):
    """The JSON response for one of our errors or a Werkzeug HTTP error: the one renderer."""
    # Imported here so the exception classes above stay free of Flask.
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    if isinstance(error, ServiceError):
        log.info("%s %s -> %s %s", request.method, request.path, error.status, error.message)
        status, message, headers = error.status, error.message, error.headers
    elif isinstance(error, HTTPException) and error.code == 413:
        status, message, headers = 413, PayloadTooLargeError.message, {}
    elif isinstance(error, HTTPException):
        headers = dict(error.get_response().headers)
        headers.pop("Content-Type", None)
        headers.pop("Content-Length", None)
        status, message = error.code, error.description or error.name
    else:
        log.exception("Unhandled error on %s %s", request.method, request.path)
        status, message, headers = 500, "Internal server error", {}
    response = jsonify(message=message)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name] = value
    return response


def init_app(app):
    """Render every error as JSON {"message": ...}: ours, Werkzeug's and unexpected ones."""
    from werkzeug.exceptions import HTTPException

    app.register_error_handler(ServiceError, error_response)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, error_response)
