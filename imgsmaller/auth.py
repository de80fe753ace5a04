"""API-key authentication: which account a request's key belongs to, and the X-RateLimit-* headers.

Imports no blueprint. The key is looked up by its SHA-256 and compared in constant
time (accounts.get_user_by_api_key); it is never logged or stored. A keyed API
request reads its account and today's usage in one statement (`authenticate_with_quota`):
nothing is cached, so a revoked key or a changed limit counts from the next request.
"""

from .accounts import get_user_by_api_key
from .errors import AuthenticationError
from .quota import QuotaStatus, limit_for, utc_day_and_reset
from .web_security import add_missing_headers


def api_key_from_request(request):
    """The key from the X-API-Key header, else from ?api_key=; the header wins."""
    return request.headers.get("X-API-Key") or request.args.get("api_key")


def authenticate(db, request, required=True):
    """The account of the request's API key; raises 401 when required and missing or invalid."""
    key = api_key_from_request(request)
    user = get_user_by_api_key(db, key.strip()) if key else None
    if user is None and required:
        _refuse(key)
    return user


def authenticate_with_quota(db, request, default_limit, now):
    """(account, QuotaStatus at `now`) of the request's API key, read in one statement; 401 like `authenticate`."""
    key = api_key_from_request(request)
    day, reset_in_seconds = utc_day_and_reset(now)
    user = get_user_by_api_key(db, key.strip(), usage_day=day) if key else None
    if user is None:
        _refuse(key)
    return user, QuotaStatus(limit_for(user, default_limit), user["used_today"] or 0, reset_in_seconds)


def _refuse(key):
    if key:
        raise AuthenticationError("Invalid API key.")
    raise AuthenticationError("Missing API key: send it in the X-API-Key header or the api_key query parameter.")


def add_rate_limit_headers(response, quota):
    """Every authenticated response tells the caller where its daily limit stands."""
    add_missing_headers(response.headers, quota.headers().items())
    return response
