"""Request ids: the client's `X-Request-ID` when it is safe to echo, else a new one; on every log record.

Imports only the stdlib. `RequestIdMiddleware` (installed by ops.init_app) sets the
id for the duration of a request and returns it in the response's `X-Request-ID`;
`install_log_records` puts it on every log record as `request_id` ("-" outside a
request), so a log format can show it and a job's "queued" line carries it.
"""

import contextvars
import logging
import os
import re
import threading
import uuid

HEADER = "X-Request-ID"
# Ids are echoed in a response header and written to logs: only short, plain tokens
# are taken from the client (no spaces, quotes or control characters).
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_current = contextvars.ContextVar("imgsmaller_request_id", default=None)
# New ids are uuid4s made from os.urandom bytes fetched 256 ids at a time per thread: one
# getrandom call per id released the GIL on every request, a wait for it back among 8
# request threads (issue 11). The bytes are the same CSPRNG output, each used once.
_IDS_PER_FETCH = 256
_random = threading.local()
# A forked child must not hand out its parent's next ids (only the forking thread's pool is copied).
os.register_at_fork(after_in_child=lambda: _random.__dict__.pop("pool", None))


def current_request_id():
    """The id of the request this thread is serving, or None."""
    return _current.get()


def choose_request_id(client_value):
    """The client's id when it is 1-100 characters of [A-Za-z0-9._-], else a new uuid4 hex."""
    if client_value and _SAFE_ID.fullmatch(client_value):
        return client_value
    return uuid.UUID(bytes=_random_16_bytes(), version=4).hex


def _random_16_bytes():
    pool = getattr(_random, "pool", None)
    if not pool:
        fetched = os.urandom(16 * _IDS_PER_FETCH)
        pool = _random.pool = [fetched[i:i + 16] for i in range(0, len(fetched), 16)]
    return pool.pop()


class RequestIdMiddleware:
    """WSGI middleware: the id is set before anything of the app runs and is on every response."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        request_id = choose_request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ["HTTP_X_REQUEST_ID"] = request_id  # the app sees the id it answers with

        def start_with_id(status, headers, exc_info=None):
            headers = [(name, value) for name, value in headers if name.lower() != HEADER.lower()]
            headers.append((HEADER, request_id))
            return start_response(status, headers, exc_info)

        _current.set(request_id)
        try:
            return self.wsgi_app(environ, start_with_id)
        finally:
            # A worker thread serves the next request later: no id must linger until then.
            _current.set(None)


def install_log_records():
    """Give every log record a `request_id` attribute; idempotent (apps are built many times in tests)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "adds_request_id", False):
        return

    def record_with_request_id(*args, **kwargs):
        record = factory(*args, **kwargs)
        record.request_id = _current.get() or "-"
        return record

    record_with_request_id.adds_request_id = True
    logging.setLogRecordFactory(record_with_request_id)
