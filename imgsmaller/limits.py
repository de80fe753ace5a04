"""How much costly work before the 202 one process runs at once: file_url fetches and image validations.

Both run in the request's own thread, before anything is charged, so without a bound a
few cheap requests could hold every thread (four fetches from a host sending a byte a
second once stalled the whole server for 9 s) or every byte of memory (16 concurrent
decodes of a 184 KB PNG that then failed took the process to 2.86 GB).

- Fetches: at most `FETCH_MAX_CONCURRENT` at once, and `FETCH_MAX_CONCURRENT_PER_ACCOUNT`
  for one account; beyond, at once 429 (that account) or 503 (everyone), with Retry-After.
  Nothing waits: a waiting request would hold the very thread the cap protects.
- Validations: the memory of the decodes running at once stays within
  `VALIDATION_MAX_MB_IN_FLIGHT`. Each decode reserves its expected peak (width x height
  from the header, read before decoding, times the format's measured bytes per pixel:
  engine.decode.DECODE_BYTES_PER_PIXEL). A request over it waits up to VALIDATION_WAIT_S
  for room, then gets 503 with Retry-After. One image alone is always let through once
  nothing else decodes (MAX_PIXELS already bounds it).

The counters live in this process's memory: two processes on one database each allow
their own amounts. Owns no table; imports only the stdlib and `errors`.
"""

import contextlib
import threading
import time

from .errors import ServiceUnavailableError, TooManyRequestsError

VALIDATION_WAIT_S = 2.0
FETCH_RETRY_AFTER_S = 10  # about one FETCH_TIMEOUT_S: by then a running fetch has finished
VALIDATION_RETRY_AFTER_S = 2


class Limits:
    """The in-process counters of one app (`app.extensions["imgsmaller.limits"]`)."""

    def __init__(self, *, fetch_max, fetch_max_per_account, validation_max_bytes, clock=time.monotonic):
        self.fetch_max = fetch_max
        self.fetch_max_per_account = fetch_max_per_account
        self.validation_max_bytes = validation_max_bytes
        self._clock = clock
        self._lock = threading.Condition()
        self._fetches = {}  # account id -> fetches running
        self._bytes_in_flight = 0

    @classmethod
    def from_config(cls, config):
        return cls(fetch_max=config["FETCH_MAX_CONCURRENT"],
                   fetch_max_per_account=config["FETCH_MAX_CONCURRENT_PER_ACCOUNT"],
                   validation_max_bytes=int(config["VALIDATION_MAX_MB_IN_FLIGHT"] * 1024 * 1024))

    @contextlib.contextmanager
    def fetch_slot(self, account_id):
        """Hold one fetch slot for `account_id`, or raise 429/503 at once when none is free."""
        with self._lock:
            mine = self._fetches.get(account_id, 0)
            if mine >= self.fetch_max_per_account:
                raise TooManyRequestsError(
                    f"Too many file_url fetches at once for this account (at most {self.fetch_max_per_account}); "
                    f"wait for one to finish.", headers={"Retry-After": str(FETCH_RETRY_AFTER_S)})
            if sum(self._fetches.values()) >= self.fetch_max:
                raise ServiceUnavailableError(
                    f"The server is already fetching {self.fetch_max} file_urls, its limit; try again shortly.",
                    headers={"Retry-After": str(FETCH_RETRY_AFTER_S)})
            self._fetches[account_id] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._fetches[account_id] -= 1
                if not self._fetches[account_id]:
                    del self._fetches[account_id]

    def fetches_running(self):
        with self._lock:
            return sum(self._fetches.values())

    @contextlib.contextmanager
    def validation_budget(self, nbytes):
        """Reserve `nbytes` of the decode budget while the block runs; wait briefly, then 503."""
        deadline = self._clock() + VALIDATION_WAIT_S
        with self._lock:
            # Room, or nothing else in flight (an image as big as the budget must still pass alone).
            while self._bytes_in_flight and self._bytes_in_flight + nbytes > self.validation_max_bytes:
                left = deadline - self._clock()
                if left <= 0:
                    raise ServiceUnavailableError(
                        "The server is busy checking other images; try again in a few seconds.",
                        headers={"Retry-After": str(VALIDATION_RETRY_AFTER_S)})
                self._lock.wait(left)
            self._bytes_in_flight += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._bytes_in_flight -= nbytes
                self._lock.notify_all()

    def bytes_in_flight(self):
        with self._lock:
            return self._bytes_in_flight


def init_app(app):
    app.extensions["imgsmaller.limits"] = Limits.from_config(app.config)


def current_limits(app):
    return app.extensions["imgsmaller.limits"]
