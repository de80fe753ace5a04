"""API-key authentication of a request: which account is calling, and its quota headers."""

from flask import current_app, g, request

from .accounts import get_user_by_api_key
from .db import get_db, utcnow
from .errors import AuthenticationError
from .quota import quota_status


def api_key_from_request():
    """The key from the X-API-Key header, else from ?api_key=; the header wins."""
    return request.headers.get("X-API-Key") or request.args.get("api_key")


def current_api_user(required=True):
    """The account of the request's API key; raises 401 when required and missing/invalid."""
    if "api_user" not in g:
        key = api_key_from_request()
        g.api_user = get_user_by_api_key(get_db(), key.strip()) if key else None
        if g.api_user is not None:
            g.quota = quota_status(get_db(), g.api_user, current_app.config["DAILY_LIMIT"], utcnow())
    if g.api_user is None and required:
        if api_key_from_request():
            raise AuthenticationError("Invalid API key.")
        raise AuthenticationError("Missing API key: send it in the X-API-Key header or the api_key query parameter.")
    return g.api_user


def add_rate_limit_headers(response):
    """Every authenticated response tells the caller where its daily limit stands."""
    quota = g.get("quota")
    if quota is not None:
        for name, value in quota.headers().items():
            response.headers.setdefault(name, value)
    return response


def init_app(app):
    app.after_request(add_rate_limit_headers)
