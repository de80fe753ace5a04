"""Throttles for log-in, sign-up and refused images, shared by every process on the database; owns `throttle_events`.

No other module reads or writes that table. Imports only `db` and the stdlib: callers pass
the client address and the email in, and get an `Attempt` back, never a Flask response.

The model: a *bucket* (say `login-address:203.0.113.5`) holds one row per counted event,
each row expiring `window_s` after it happened. An action names its buckets; in one
transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock per bucket) every
bucket is checked and, only if none refuses, one row is added to each. So the check and
the count are one step: N requests racing on a bucket with room for k get exactly k
through, whatever the number of threads, processes or hosts (the in-memory throttle this
replaces let 19 of 60 simultaneous wrong passwords through a limit of 10). Expired rows
are deleted in the same transaction, so the table holds at most the events of the longest
window.

Log-in counts an attempt as a failure from the moment it passes the check (a password
check racing another cannot slip through); a right password takes its rows back. Its buckets:

- the client address and the email together: `LOGIN_MAX_FAILURES` per `LOGIN_LOCKOUT_S`
  (one address guessing one account);
- the client address alone: `LOGIN_MAX_FAILURES_PER_ADDRESS` (one address trying many
  accounts; higher, so a shared office address does not lock out everyone behind it);
- the email alone: `LOGIN_MAX_FAILURES_PER_EMAIL`, far higher, and past it an
  exponential backoff instead of a lock (guessing from many addresses). Guessing from
  one address can therefore never lock the account's owner out from another address.

Sign-up counts every attempt that reaches account creation per client address (an
"already exists" answer tells whether an email has an account, so those count too), and
the accounts really created server-wide per hour.

Refused images: every upload an account sends that is decoded and then refused (422)
counts for an hour; past `REFUSED_IMAGES_MAX_PER_HOUR` that account's compress requests
get 429 until the oldest refusal is an hour old. Validation is free otherwise (nothing is
charged), so this bounds what one account can make the server decode in vain.
"""

import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from .db import dialect, transaction

log = logging.getLogger(__name__)

# An IPv6 subscriber gets at least a /64, so a client "address" is its /64; counting single
# IPv6 addresses would give one attacker 2^64 fresh addresses.
IPV6_PREFIX = 64
# Real addresses have at most 254 characters (RFC 5321); longer input is hashed, so a row
# stays small whatever is posted in the email field.
MAX_KEY_CHARS = 320
SIGNUP_WINDOW_S = 3600
REFUSED_IMAGES_WINDOW_S = 3600


@dataclass(frozen=True)
class Limit:
    """At most `max_events` rows per bucket of this kind within `window_s` seconds.

    `counts` says which outcome keeps the row: "failures" (a success takes it back),
    "successes" (a failure takes it back) or "attempts" (always kept). With `backoff`,
    reaching `max_events` does not lock the bucket for the window: each further event
    must wait 2**(events beyond the limit) seconds after the last one, at most `window_s`.
    """

    kind: str
    max_events: int
    window_s: float
    counts: str = "failures"
    backoff: bool = False
    forgiven_by_success: bool = False  # a success also deletes the bucket's earlier rows


class Attempt:
    """An action that passed its throttles (`retry_after == 0`) or was refused (seconds to wait)."""

    def __init__(self, db, rows, retry_after, message, clock):
        self._db = db
        self._rows = rows  # [(Limit, bucket, row id)] counted for this attempt
        self.retry_after = retry_after
        self.message = message
        self._clock = clock

    def succeeded(self):
        """Take back the rows that count only failures; forgive the buckets that a success forgives."""
        self._settle("failures", forgive=True)

    def failed(self):
        """Take back the rows that count only successes."""
        self._settle("successes", forgive=False)

    def _settle(self, released_kind, forgive):
        if not self._rows:
            return
        with transaction(self._db):
            for limit, bucket, row_id in self._rows:
                if limit.counts == released_kind:
                    self._db.execute("DELETE FROM throttle_events WHERE id = ?", (row_id,))
                if forgive and limit.forgiven_by_success:
                    self._db.execute("DELETE FROM throttle_events WHERE bucket = ?", (bucket,))
        self._rows = []


class Throttle:
    """The server's throttles (limits from the settings); every method takes the caller's connection."""

    def __init__(self, *, login_max_failures, login_max_failures_per_address, login_max_failures_per_email,
                 login_window_s, signup_max_per_address_per_hour, signup_max_per_hour,
                 refused_images_max_per_hour=60, clock=time.time):
        self.login_limits = (
            Limit("login-address", login_max_failures_per_address, login_window_s),
            Limit("login-email-address", login_max_failures, login_window_s, forgiven_by_success=True),
            Limit("login-email", login_max_failures_per_email, login_window_s, backoff=True),
        )
        self.signup_limits = (
            Limit("signup-address", signup_max_per_address_per_hour, SIGNUP_WINDOW_S, counts="attempts"),
            Limit("signup-server", signup_max_per_hour, SIGNUP_WINDOW_S, counts="successes"),
        )
        self.refused_images_limit = Limit("refused-images", refused_images_max_per_hour, REFUSED_IMAGES_WINDOW_S,
                                          counts="attempts")
        self.clock = clock

    @classmethod
    def from_config(cls, config):
        return cls(login_max_failures=config["LOGIN_MAX_FAILURES"],
                   login_max_failures_per_address=config["LOGIN_MAX_FAILURES_PER_ADDRESS"],
                   login_max_failures_per_email=config["LOGIN_MAX_FAILURES_PER_EMAIL"],
                   login_window_s=config["LOGIN_LOCKOUT_S"],
                   signup_max_per_address_per_hour=config["SIGNUP_MAX_PER_ADDRESS_PER_HOUR"],
                   signup_max_per_hour=config["SIGNUP_MAX_PER_HOUR"],
                   refused_images_max_per_hour=config["REFUSED_IMAGES_MAX_PER_HOUR"])

    def begin_login(self, db, email, address):
        """Check and count one log-in attempt; call `succeeded()` on the result when the password is right."""
        client, account = client_key(address), email_key(email)
        # The address has no spaces, so "address email" cannot be forged by choosing an email.
        buckets = [client, f"{client} {account}", account]
        attempt = self._begin(db, zip(self.login_limits, buckets, strict=True), "Too many failed log-ins")
        if attempt.retry_after:
            # One line per refused attempt, with the address, for fail2ban-style tools.
            log.warning("Log-in throttled for %s (retry in %ss)", client, attempt.retry_after)
        return attempt

    def begin_signup(self, db, address):
        """Check and count one sign-up; call `failed()` on the result when no account was made."""
        client = client_key(address)
        attempt = self._begin(db, zip(self.signup_limits, [client, "all"], strict=True), "Too many sign-ups")
        if attempt.retry_after:
            log.warning("Sign-up throttled for %s (retry in %ss)", client, attempt.retry_after)
        return attempt

    def refused_images_wait(self, db, account_id):
        """Seconds before `account_id` may send another image, after too many refused ones; 0: now."""
        wait = _wait(db, self.refused_images_limit, f"refused-images:{int(account_id)}", self.clock())
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def count_refused_image(self, db, account_id):
        """Count one upload of `account_id` that was decoded and refused."""
        attempt = self._begin(db, [(self.refused_images_limit, int(account_id))], "Too many refused images")
        if attempt.retry_after:
            log.warning("Account %s throttled for refused images (retry in %ss)", int(account_id), attempt.retry_after)

    def _begin(self, db, limits_and_keys, refusal):
        now = self.clock()
        buckets = [(limit, f"{limit.kind}:{key}") for limit, key in limits_and_keys]
        # On SQLite, BEGIN IMMEDIATE serialises the check and the count; on PostgreSQL, the
        # bucket locks do (advisory locks, so a first event of an empty bucket races nothing).
        with transaction(db, locks=[f"throttle:{bucket}" for _, bucket in buckets]):
            # Housekeeping skips rows another transaction holds: it never waits, so never deadlocks.
            db.execute("DELETE FROM throttle_events WHERE id IN (SELECT id FROM throttle_events WHERE expires_at <= ?"
                       + dialect(db).skip_locked + ")", (now,))
            wait = max(_wait(db, limit, bucket, now) for limit, bucket in buckets)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return Attempt(db, [], seconds, f"{refusal}. Try again in {_about(seconds)}.", self.clock)
            rows = []
            for limit, bucket in buckets:
                (row_id,) = db.execute("INSERT INTO throttle_events (bucket, at, expires_at) VALUES (?, ?, ?)"
                                       " RETURNING id", (bucket, now, now + limit.window_s)).fetchone()
                rows.append((limit, bucket, row_id))
        return Attempt(db, rows, 0, None, self.clock)


def _wait(db, limit, bucket, now):
    """Seconds until one more event fits in `bucket`; 0 when it fits now."""
    count, last_at = db.execute("SELECT count(*), max(at) FROM throttle_events WHERE bucket = ? AND expires_at > ?",
                                (bucket, now)).fetchone()
    if count < limit.max_events:
        return 0
    if limit.backoff:
        return last_at + min(limit.window_s, 2.0 ** min(count - limit.max_events, 62)) - now
    # Full until enough of the oldest events have expired to leave room for one.
    (frees_at,) = db.execute("SELECT expires_at FROM throttle_events WHERE bucket = ? AND expires_at > ? "
                             "ORDER BY expires_at LIMIT 1 OFFSET ?", (bucket, now, count - limit.max_events)).fetchone()
    return frees_at - now


def _about(seconds):
    if seconds < 90:
        return f"about {seconds} second{'s' if seconds != 1 else ''}"
    minutes = round(seconds / 60)
    return f"about {minutes} minutes"


def client_key(address):
    """The throttled identity of a client address: an IPv4 address, or an IPv6 /64."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"  # no address (a Unix socket): one shared bucket, never a crash
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


def email_key(email):
    text = (email or "").strip().lower()
    if len(text) > MAX_KEY_CHARS:
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text
