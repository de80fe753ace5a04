"""The daily limit: accepted compress requests per account per UTC day.

`charge` must run inside the same BEGIN IMMEDIATE transaction that inserts the
job, so that with N requests left exactly N racing requests are accepted.
"""

import math
from dataclasses import dataclass
from datetime import timedelta

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
    return now.strftime("%Y-%m-%d")


def seconds_until_reset(now):
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


def limit_for(user, default_limit):
    return default_limit if user["daily_limit"] is None else user["daily_limit"]


def quota_status(db, user, default_limit, now):
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
    """Use one request of today's allowance, or raise 429. Call inside a write transaction."""
    status = quota_status(db, user, default_limit, now)
    raise_if_exhausted(status)
    db.execute(
        "INSERT INTO usage (user_id, day, count) VALUES (?, ?, 1)"
        " ON CONFLICT (user_id, day) DO UPDATE SET count = count + 1",
        (user["id"], utc_day(now)),
    )
    return QuotaStatus(status.limit, status.used + 1, status.reset_in_seconds)


def usage_history(db, user_id, days, now):
    """[(day, count)] for the last `days` UTC days, oldest first, zeros included."""
    first = now - timedelta(days=days - 1)
    rows = db.execute(
        "SELECT day, count FROM usage WHERE user_id = ? AND day >= ?", (user_id, utc_day(first))
    ).fetchall()
    counts = {row["day"]: row["count"] for row in rows}
    return [(utc_day(first + timedelta(days=i)), counts.get(utc_day(first + timedelta(days=i)), 0)) for i in range(days)]
