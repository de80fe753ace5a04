"""`wait` on a compress request: holding the answer until the job ends, with a cap on how many requests wait at once.

Imports only the stdlib and job_store. A waiting request holds one of the server's request
threads (waitress has a fixed number, `flask --app app serve --threads`, 8 by default), so
at most MAX_WAITING_REQUESTS wait at the same time; any other request asking to wait is
answered 202 at once, exactly as without `wait`. The wait polls the job's row on the
request's connection, which is in autocommit mode: no transaction is held between polls,
and the job may run in any process on the database.
"""

import threading
import time

from . import job_store

# The first poll comes soon (a small image is done in tens of milliseconds), then they
# back off to 4 a second: an indexed read by id each, nothing the database notices.
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25
ENDED = ("done", "failed")


class Waiter:
    """The app's waiting requests; `max_waiting` of them at once (0: `wait` is never honoured)."""

    def __init__(self, max_waiting, *, sleep=time.sleep, clock=time.monotonic):
        self.max_waiting = max_waiting
        self._slots = threading.BoundedSemaphore(max_waiting) if max_waiting else None
        self._sleep, self._clock = sleep, clock

    def wait_for_end(self, db, job_id, seconds):
        """The job's row once it is done or failed within `seconds`; None if it is not, or no slot is free."""
        if self._slots is None or not self._slots.acquire(blocking=False):
            return None
        try:
            return self._poll(db, job_id, self._clock() + seconds)
        finally:
            self._slots.release()

    def _poll(self, db, job_id, deadline):
        delay = POLL_FIRST_S
        while True:
            job = job_store.get_job(db, job_id)
            if job is None or job["status"] in ENDED:
                return job
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._sleep(min(delay, remaining))
            delay = min(2 * delay, POLL_MAX_S)


def init_app(app):
    app.extensions["imgsmaller.waits"] = Waiter(app.config["MAX_WAITING_REQUESTS"])


def current_waiter(app):
    return app.extensions["imgsmaller.waits"]
