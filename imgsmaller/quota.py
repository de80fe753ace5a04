"""The daily limit: accepted compress requests per account per UTC day.

`charge` is one statement, an upsert that counts only while under the limit, so with N
requests left exactly N racing requests are accepted on SQLite and on PostgreSQL, from any
number of processes and hosts (a select-then-update let 125 of 100 through on PostgreSQL).
It runs inside the transaction that inserts the job: a failed insert takes the charge back.
"""

import functools
import math
from dataclasses import dataclass
from datetime import date, timedelta

from .errors import QuotaExceededError


@dataclass(frozen=True)
class QuotaStatus:
    limit: int
    used: int
    reset_in_seconds: int

    @property
    def remaining(self):
        return max(0, self.limit - self.used)

    def headers(self):
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_in_seconds),
        }


def utc_day(now):
    return _day_name(now.toordinal())


@functools.lru_cache(maxsize=4)
def _day_name(ordinal):
    """strftime once per day rather than once per request (issue 11)."""
    return date.fromordinal(ordinal).strftime("%Y-%m-%d")


def seconds_until_reset(now):
    """Whole seconds (at least 1) until the next midnight of `now`'s day (UTC: days are 86,400 s)."""
    into_day = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1_000_000
    return max(1, math.ceil(86400 - into_day))


def utc_day_and_reset(now):
    return utc_day(now), seconds_until_reset(now)


def limit_for(user, default_limit):
    return default_limit if user["daily_limit"] is None else user["daily_limit"]


def quota_status(db, user, default_limit, now):
    """Where `user`'s daily limit stands at `now` (keyed API requests read it with the account:
    auth.authenticate_with_quota)."""
    row = db.execute(
        "SELECT count FROM usage WHERE user_id = ? AND day = ?", (user["id"], utc_day(now))
    ).fetchone()
    return QuotaStatus(limit_for(user, default_limit), row["count"] if row else 0, seconds_until_reset(now))


def raise_if_exhausted(status):
    if status.remaining <= 0:
        headers = {**status.headers(), "Retry-After": str(status.reset_in_seconds)}
        raise QuotaExceededError(
            f"Daily limit of {status.limit} requests exceeded. It resets at 00:00 UTC, "
            f"in {status.reset_in_seconds} seconds.",
            headers=headers,
        )


def charge(db, user, default_limit, now):
    """Use one request of today's allowance, or raise 429. Call inside the job's transaction."""
    limit = limit_for(user, default_limit)
    # The row is locked from the upsert to the commit; the WHERE is evaluated on its latest
    # version, so no two racing requests can both take the last request of the day.
    row = db.execute(
        "INSERT INTO usage (user_id, day, count) SELECT ?, ?, 1 WHERE ? > 0"
        " ON CONFLICT (user_id, day) DO UPDATE SET count = usage.count + 1 WHERE usage.count < ?"
        " RETURNING count",
        (user["id"], utc_day(now), limit, limit),
    ).fetchone()
    if row is None:
        raise_if_exhausted(QuotaStatus(limit, limit, seconds_until_reset(now)))
    return QuotaStatus(limit, row["count"], seconds_until_reset(now))


def all_usage(db):
    """Every (account, day) count (copy-to-postgres)."""
    return db.execute("SELECT * FROM usage ORDER BY user_id, day").fetchall()


def usage_history(db, user_id, days, now):
    """[(day, count)] for the last `days` UTC days, oldest first, zeros included."""
    first = now - timedelta(days=days - 1)
    rows = db.execute(
        "SELECT day, count FROM usage WHERE user_id = ? AND day >= ?", (user_id, utc_day(first))
    ).fetchall()
    counts = {row["day"]: row["count"] for row in rows}
    names = [utc_day(first + timedelta(days=i)) for i in range(days)]
    return [(name, counts.get(name, 0)) for name in names]
