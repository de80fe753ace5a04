"""API-key authentication: which account a request's key belongs to, and the X-RateLimit-* headers.

Imports no blueprint. The key is looked up by its SHA-256 and compared in constant
time (accounts.get_user_by_api_key); it is never logged or stored.
"""

from .accounts import get_user_by_api_key
from .errors import AuthenticationError


def api_key_from_request(request):
    """The key from the X-API-Key header, else from ?api_key=; the header wins."""
    return request.headers.get("X-API-Key") or request.args.get("api_key")


def authenticate(db, request, required=True):
    """The account of the request's API key; raises 401 when required and missing or invalid."""
    key = api_key_from_request(request)
    user = get_user_by_api_key(db, key.strip()) if key else None
    if user is None and required:
        if key:
            raise AuthenticationError("Invalid API key.")
        raise AuthenticationError("Missing API key: send it in the X-API-Key header or the api_key query parameter.")
    return user


def add_rate_limit_headers(response, quota):
    """Every authenticated response tells the caller where its daily limit stands."""
    for name, value in quota.headers().items():
        response.headers.setdefault(name, value)
    return response
