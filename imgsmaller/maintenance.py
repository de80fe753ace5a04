"""The upkeep of each process that runs jobs, on the pool's maintenance thread: its heartbeat in
`workers`, the reaper that queues again the jobs of leases that ran out, and every
CLEANUP_INTERVAL_S the expiry of results and Idempotency-Keys, silent workers and stale
temporary files. No Flask; job_store.py and idempotency.py hold the SQL.
"""

import logging
import os
import socket
import time
from contextlib import closing
from datetime import timedelta

from . import idempotency, job_store
from .db import connect, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = 30  # how often a process refreshes its `workers` row and expires old results
STALE_AFTER_S = 4 * HEARTBEAT_S  # a `workers` row silent this long belongs to a process that died


class Upkeep:
    def __init__(self, database, storage, instance_id, cleanup_interval_s, lease_s):
        self.database = database
        self.storage = storage
        self.instance_id = instance_id
        self.hostname = socket.gethostname()
        self.cleanup_interval_s = cleanup_interval_s
        self.interval_s = min(HEARTBEAT_S, lease_s / 3, cleanup_interval_s)  # renewals well inside a lease
        self._next_cleanup = 0.0

    def run(self):
        """Say this process is alive, queue again the jobs of workers whose lease ran out;
        every CLEANUP_INTERVAL_S also expire old results and Idempotency-Keys."""
        with closing(connect(self.database)) as db:
            job_store.beat_heartbeat(db, self.instance_id, self.hostname, os.getpid())
            job_store.requeue_expired_leases(db)
            if time.monotonic() >= self._next_cleanup:
                self._next_cleanup = time.monotonic() + self.cleanup_interval_s
                job_store.forget_silent_workers(db, utcnow() - timedelta(seconds=STALE_AFTER_S))
                expire_results(db, self.storage, utcnow())
                idempotency.delete_expired(db, utcnow())
                self.storage.remove_stale_temp_files()

    def forget_worker(self):
        """Remove this process's `workers` row at shutdown (best effort: it goes stale otherwise)."""
        try:
            with closing(connect(self.database)) as db:
                job_store.forget_worker(db, self.instance_id)
        except Exception:
            log.warning("Could not unregister worker %s", self.instance_id, exc_info=True)


def expire_results(db, storage, now):
    """Delete the files of jobs past expires_at; the row stays so downloads can answer 410.

    A job whose files could not all be deleted (the store is down) keeps files_deleted = 0,
    so the next run tries again: nothing is ever lost track of. Returns the jobs cleaned."""
    cleaned = 0
    for job_id in job_store.expired_job_ids(db, now):
        if storage.delete_job_files(job_id):
            job_store.mark_files_deleted(db, job_id)
            cleaned += 1
        else:
            log.warning("The files of expired job %s could not all be deleted; trying again next time", job_id)
    return cleaned
