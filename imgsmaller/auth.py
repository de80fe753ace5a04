"""API-key authentication: which account a request's key belongs to, and the X-RateLimit-* headers.

Imports no blueprint. The key is looked up by its SHA-256 and compared in constant
time (accounts.get_user_by_api_key); it is never logged or stored. A keyed API
request reads its account and today's usage in one statement (`authenticate_with_quota`):
nothing is cached, so a revoked key or a changed limit counts from the next request.
"""

import hmac

from .accounts import KEY_PREFIX, get_user_by_api_key, hash_api_key
from .errors import AuthenticationError
from .quota import QuotaStatus, limit_for, utc_day_and_reset
from .web_security import add_missing_headers

# The account of a key hash and its usage row for one UTC day, if any (usage's key is (user_id, day)).
_USER_AND_USAGE = ("SELECT users.*, usage.count AS used_today FROM users"
                   " LEFT JOIN usage ON usage.user_id = users.id AND usage.day = ? WHERE users.key_hash = ?")


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
    given = api_key_from_request(request)
    key = given.strip() if given else None
    if not key or not key.startswith(KEY_PREFIX):
        _refuse(given)
    day, reset_in_seconds = utc_day_and_reset(now)
    key_hash = hash_api_key(key)
    user = db.execute(_USER_AND_USAGE, (day, key_hash)).fetchone()
    if user is None or not hmac.compare_digest(user["key_hash"], key_hash):
        _refuse(given)
    used = user["used_today"]
    return user, QuotaStatus(limit_for(user, default_limit), used or 0, reset_in_seconds)


def _refuse(key):
    if key:
        raise AuthenticationError("Invalid API key.")
    raise AuthenticationError("Missing API key: send it in the X-API-Key header or the api_key query parameter.")


def add_rate_limit_headers(response, quota):
    """Every authenticated response tells the caller where its daily limit stands."""
    add_missing_headers(response.headers, quota.headers().items())
    return response
