"""Signed webhooks: the webhook_deliveries table (every statement on it) and the sender that POSTs them.

Imports the stdlib, db, errors, accounts, job_store and fetch; never Flask, so the pool's thread
sends with plain values. A compress request with a `callback_url` gets its delivery row in
the transaction that inserts its job ('waiting'), so no job can end without one. When the
job ends, the pool tells `Sender.job_ended`: the body is fixed (the /result answer plus
`progress_key` and `result_url`) and the row is 'pending', due now. The sender thread of
any worker process claims due rows (FOR UPDATE SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE
on SQLite), so one delivery is never sent twice at once, and POSTs each through fetch.py
(the same SSRF checks as file_url, no redirects, DELIVERY_TIMEOUT_S in all). A 2xx answer
is 'delivered'; anything else is tried again after BACKOFF_S, then 'failed'. Times are on
the database clock, like job leases. A process that dies holding a claim loses nothing:
the claim runs out after CLAIM_S and another process sends it (that attempt counts).

Each attempt is signed with the account's secret at the moment it is sent (a rotated
secret signs every later attempt): `ImgSmaller-Signature: t=<unix time>,v1=<hex>`, the
hex being HMAC-SHA256 of f"{t}.{body}" keyed with the whole secret (Stripe's scheme).
"""

import hashlib
import hmac
import json
import logging
import threading
import time

from . import accounts, job_store
from .db import connect, dialect, to_iso, transaction, utcnow
from .errors import InvalidRequestError, ServiceError
from .fetch import check_callback_url, post_json

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "ImgSmaller-Signature"
# Waits after the 1st, 2nd and 3rd failed attempt: 1 min, 5 min, 30 min; the 4th failure gives up.
BACKOFF_S = (60, 300, 1800)
MAX_ATTEMPTS = len(BACKOFF_S) + 1
DELIVERY_TIMEOUT_S = 10.0  # the whole POST: DNS, connect, TLS, the answer's headers and first bytes
CLAIM_S = 60  # a claimed delivery is not due again this long: more than one attempt can take
CHECK_S = 60  # a waiting delivery whose job's end was not announced (its process died) is looked at this often
POLL_S = 5.0  # how often an idle sender looks for due retries
RECENT = 20  # deliveries on the Dashboard


def sign(secret, timestamp, body):
    """The v1 signature of `body` (bytes) sent at `timestamp` (Unix seconds)."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret, timestamp, body):
    return f"t={int(timestamp)},v1={sign(secret, timestamp, body)}"


# -- the request's field, and the table ---------------------------------------------


def parse_callback(value, allowed_domain, base_url=None):
    """None when absent; else (the URL, `base_url`): its form and host checked now (422 naming callback_url).

    Where its name points is checked at every delivery, as for every connection fetch.py makes."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError("callback_url must be a non-empty string.")
    return check_callback_url(value.strip(), allowed_domain), base_url


def expect_delivery(db, job, callback):
    """Record that the job's end is to be POSTed, if `callback` (parse_callback's answer): inside the
    transaction inserting the job, so that no job ends without its delivery."""
    if callback is None:
        return
    url, base_url = callback
    db.execute(
        "INSERT INTO webhook_deliveries (job_id, user_id, url, base_url, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, " + dialect(db).now_plus_iso + ", ?)",
        (job["id"], job["user_id"], url, base_url, CHECK_S, to_iso(utcnow())),
    )


def recent_deliveries(db, user_id, limit=RECENT):
    return db.execute(
        "SELECT * FROM webhook_deliveries WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
    ).fetchall()


def all_deliveries(db):
    """Every delivery, oldest first (copy-to-postgres)."""
    return db.execute("SELECT * FROM webhook_deliveries ORDER BY id").fetchall()


def get_delivery(db, job_id):
    return db.execute("SELECT * FROM webhook_deliveries WHERE job_id = ?", (job_id,)).fetchone()


def job_ended(db, job_id):
    """The job's end is recorded: fix the body and make its delivery due now. False if it has none."""
    row = db.execute("SELECT id, base_url FROM webhook_deliveries WHERE job_id = ? AND status = 'waiting'",
                     (job_id,)).fetchone()
    if row is None:  # no callback_url (one indexed read per job), or already promoted
        return False
    job = job_store.get_job(db, job_id)
    view = job_store.view_job(job) if job is not None else None
    if view is None or view.status == "processing":
        return False
    base = row["base_url"]
    body = {**view.answer(base), "progress_key": job["progress_key"],
            "result_url": f"{base}/result/{job['progress_key']}"}
    with transaction(db):
        return db.execute(
            "UPDATE webhook_deliveries SET status = 'pending', body = ?, next_attempt_at = "
            + dialect(db).now_iso + " WHERE id = ? AND status = 'waiting'",
            (json.dumps(body), row["id"]),
        ).rowcount == 1


def _look_at_waiting(db, limit=100):
    """Deliveries whose job ended without telling us (a reaped job, a process that died):
    pending when their job has ended, else looked at again in CHECK_S."""
    due = db.execute(
        "SELECT job_id FROM webhook_deliveries WHERE status = 'waiting' AND next_attempt_at <= "
        + dialect(db).now_iso + " ORDER BY next_attempt_at LIMIT ?", (limit,),
    ).fetchall()
    for row in due:
        if not job_ended(db, row["job_id"]):
            with transaction(db):
                db.execute("UPDATE webhook_deliveries SET next_attempt_at = " + dialect(db).now_plus_iso
                           + " WHERE job_id = ? AND status = 'waiting'", (CHECK_S, row["job_id"]))


def _claim_next(db):
    """Claim the most overdue pending delivery for one attempt (counted now); None if none is due.

    The subselect skips rows another claim holds on PostgreSQL (SKIP LOCKED), and the outer WHERE
    re-checks the row once it is locked."""
    kind = dialect(db)
    due = "status = 'pending' AND attempts < ? AND next_attempt_at <= " + kind.now_iso
    with transaction(db):
        return db.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = " + kind.now_iso
            + ", next_attempt_at = " + kind.now_plus_iso
            + " WHERE id = (SELECT id FROM webhook_deliveries WHERE " + due
            + " ORDER BY next_attempt_at, id LIMIT 1" + kind.skip_locked + ") AND " + due + " RETURNING *",
            (CLAIM_S, MAX_ATTEMPTS, MAX_ATTEMPTS),
        ).fetchone()


def _record(db, claimed, status_code, error):
    """The attempt's outcome, fenced on the attempt (a late answer after a lost claim changes nothing)."""
    kind = dialect(db)
    ours = " WHERE id = ? AND attempts = ? AND status = 'pending'"
    fence = (claimed["id"], claimed["attempts"])
    with transaction(db):
        if status_code is not None and 200 <= status_code < 300:
            sql, values = ("status = 'delivered', error = NULL, finished_at = " + kind.now_iso, ())
        elif claimed["attempts"] >= MAX_ATTEMPTS:
            sql, values = ("status = 'failed', error = ?, finished_at = " + kind.now_iso, (error,))
        else:
            backoff = BACKOFF_S[claimed["attempts"] - 1]
            sql, values = ("error = ?, next_attempt_at = " + kind.now_plus_iso, (error, backoff))
        return db.execute("UPDATE webhook_deliveries SET response_code = ?, " + sql + ours,
                          (status_code, *values, *fence)).rowcount == 1


def _any_due(db):
    """Whether a pending delivery is due now (what _give_up_abandoned and _claim_next both look for)."""
    return db.execute("SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= "
                      + dialect(db).now_iso + " LIMIT 1").fetchone() is not None


def _give_up_abandoned(db):
    """A last attempt whose process died with the claim: nothing is left to try."""
    with transaction(db):
        db.execute(
            "UPDATE webhook_deliveries SET status = 'failed', finished_at = " + dialect(db).now_iso
            + ", error = coalesce(error, 'No answer.') WHERE status = 'pending' AND attempts >= ?"
            " AND next_attempt_at <= " + dialect(db).now_iso, (MAX_ATTEMPTS,),
        )


# -- sending ------------------------------------------------------------------------


def deliver_due(db, *, allow_private, timeout_s=DELIVERY_TIMEOUT_S, stopping=None):
    """Send every delivery due now, one at a time; returns how many attempts were made."""
    _look_at_waiting(db)
    if not _any_due(db):
        return 0   # a read, not two write transactions, each poll of an idle sender
    _give_up_abandoned(db)
    attempts = 0
    while stopping is None or not stopping.is_set():
        claimed = _claim_next(db)
        if claimed is None:
            break
        attempts += 1
        status_code, error = _attempt(db, claimed, allow_private, timeout_s)
        _record(db, claimed, status_code, error)
    return attempts


def _attempt(db, claimed, allow_private, timeout_s):
    """POST one delivery: (HTTP status or None, why it failed or None)."""
    user = accounts.get_user(db, claimed["user_id"]) if claimed["user_id"] is not None else None
    if user is None:
        return None, "The account no longer exists."
    body = claimed["body"].encode("utf-8")
    secret = user["webhook_secret"] or accounts.webhook_secret(db, user["id"])   # made on first use
    headers = {SIGNATURE_HEADER: signature_header(secret, time.time(), body)}
    try:
        status_code = post_json(claimed["url"], body, headers, allowed_domain=user["allowed_domain"],
                                timeout_s=timeout_s, allow_private=allow_private)
    except ServiceError as error:
        log.info("Webhook of job %s not delivered: %s", claimed["job_id"], error.message)
        return None, error.message
    except Exception:
        log.exception("Webhook of job %s: unexpected error", claimed["job_id"])
        return None, "Internal error while sending."
    if 200 <= status_code < 300:
        log.info("Webhook of job %s delivered (HTTP %s)", claimed["job_id"], status_code)
        return status_code, None
    if 300 <= status_code < 400:
        return status_code, f"The receiver answered HTTP {status_code}; redirects are not followed."
    return status_code, f"The receiver answered HTTP {status_code}."


class Sender:
    """One process's webhook sender: a thread that sends due deliveries, woken when a job ends.

    Started with the job pool (so never on a web node with WORKERS=0); with `inline` (tests)
    a delivery is sent in the thread whose job ended, right away.
    """

    def __init__(self, database, *, allow_private, inline=False, timeout_s=DELIVERY_TIMEOUT_S):
        self.database = database
        self.allow_private = allow_private
        self.inline = inline
        self.timeout_s = timeout_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        with self._lock:
            if self.inline or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="imgsmaller-webhooks", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop after the attempt in flight (at most DELIVERY_TIMEOUT_S); pending ones wait in the table."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def job_ended(self, db, job_id):
        """Called by the pool once a job's end is recorded; never raises (the job's result stands)."""
        try:
            if job_ended(db, job_id):
                if self.inline:
                    deliver_due(db, allow_private=self.allow_private, timeout_s=self.timeout_s)
                self._wake.set()
        except Exception:
            log.exception("The webhook of job %s could not be queued; the sender will find it", job_id)

    def _loop(self):
        db = None
        while not self._stopping.is_set():
            try:
                db = db or connect(self.database)
                deliver_due(db, allow_private=self.allow_private, timeout_s=self.timeout_s, stopping=self._stopping)
            except Exception:
                log.exception("Sending webhooks failed; trying again in %ss", POLL_S)
                if db is not None:
                    db.close()
                db = None
            self._wake.wait(POLL_S)
            self._wake.clear()
        if db is not None:
            db.close()
