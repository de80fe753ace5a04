"""Accounts and their API keys: creation, lookup, key rotation, passwords, domain and limit changes, webhook secrets.

Keys are 256-bit random tokens shown once; only their SHA-256 is stored. A fast
hash is right here (unlike for passwords): the key has full entropy, so there is
nothing to brute-force, and lookups stay one indexed query.
"""

import hashlib
import hmac
import secrets

from werkzeug.security import generate_password_hash

from .db import IntegrityError, to_iso, transaction, utcnow
from .domains import normalize_allowed_domain
from .errors import InvalidRequestError

KEY_PREFIX = "isk_"
KEY_PREFIX_SHOWN = len(KEY_PREFIX) + 8  # characters kept to recognise a key
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # scrypt hashes any length; this only bounds the work per request
WEBHOOK_SECRET_PREFIX = "whsec_"


class AccountError(InvalidRequestError):
    """A request about accounts that cannot be done (unknown or duplicate email, ...)."""


def new_api_key():
    return KEY_PREFIX + secrets.token_hex(32)


def hash_api_key(key):
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def normalize_email(email):
    email = (email or "").strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email) or len(email) > 254:
        raise AccountError(f"Not a valid email address: {email!r}.")
    return email


def check_new_password(password):
    """The rule for every new password (sign-up, change, CLI); AccountError says it."""
    if not MIN_PASSWORD_LENGTH <= len(password or "") <= MAX_PASSWORD_LENGTH:
        raise AccountError(f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters.")
    return password


def hash_password(password):
    return generate_password_hash(check_new_password(password), method="scrypt")


def create_user(db, email, *, password=None, allowed_domain=None, daily_limit=None):
    """Insert an account and return (user_id, api_key); the key is never stored."""
    email = normalize_email(email)
    allowed_domain = normalize_allowed_domain(allowed_domain) if allowed_domain else None
    key = new_api_key()
    now = to_iso(utcnow())
    password_hash = hash_password(password) if password else None
    try:
        with transaction(db):
            user_id = db.execute(
                "INSERT INTO users (email, password_hash, allowed_domain, daily_limit,"
                " key_hash, key_prefix, key_created_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (email, password_hash, allowed_domain, daily_limit, hash_api_key(key),
                 key[:KEY_PREFIX_SHOWN], now, now),
            ).fetchone()[0]
    except IntegrityError:
        raise AccountError(f"An account with email {email} already exists.") from None
    return user_id, key


def get_user_by_email(db, email):
    # lower() on both sides: case-insensitive on both engines, through the users_email_lower index.
    return db.execute("SELECT * FROM users WHERE lower(email) = lower(?)", ((email or "").strip(),)).fetchone()


def get_user(db, user_id):
    return db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()


def all_users(db):
    """Every account, oldest first (copy-to-postgres)."""
    return db.execute("SELECT * FROM users ORDER BY id").fetchall()


def require_user_by_email(db, email):
    user = get_user_by_email(db, email)
    if user is None:
        raise AccountError(f"No account with email {email}.")
    return user


# The account of a key hash, with its usage count for one UTC day (NULL: none yet) in the same
# statement: one round trip per keyed API request (issue 11). usage's key is (user_id, day).
_USER_AND_USAGE = ("SELECT users.*, usage.count AS used_today FROM users"
                   " LEFT JOIN usage ON usage.user_id = users.id AND usage.day = ? WHERE users.key_hash = ?")


def get_user_by_api_key(db, key, *, usage_day=None):
    """The account owning `key`, or None. Compared in constant time on the hash. With `usage_day`
    (quota.utc_day) the row also has `used_today`, that day's usage count or None."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    key_hash = hash_api_key(key)
    if usage_day is None:
        user = db.execute("SELECT * FROM users WHERE key_hash = ?", (key_hash,)).fetchone()
    else:
        user = db.execute(_USER_AND_USAGE, (usage_day, key_hash)).fetchone()
    if user is None or not hmac.compare_digest(user["key_hash"], key_hash):
        return None
    return user


def rotate_api_key(db, user_id):
    """Give the account a new key; the old one fails from this commit on."""
    key = new_api_key()
    with transaction(db):
        db.execute(
            "UPDATE users SET key_hash = ?, key_prefix = ?, key_created_at = ? WHERE id = ?",
            (hash_api_key(key), key[:KEY_PREFIX_SHOWN], to_iso(utcnow()), user_id),
        )
    return key


def set_allowed_domain(db, user_id, domain):
    """Set the Allowed Domain (normalised and vetted: InvalidDomainError), or None to clear it."""
    domain = normalize_allowed_domain(domain) if domain else None
    with transaction(db):
        db.execute("UPDATE users SET allowed_domain = ? WHERE id = ?", (domain, user_id))


def set_password(db, user_id, password):
    """Set a new password and end every session of the account (the caller may start a new one)."""
    password_hash = hash_password(password)
    with transaction(db):
        db.execute("UPDATE users SET password_hash = ?, session_version = session_version + 1 WHERE id = ?",
                   (password_hash, user_id))


def end_sessions(db, user_id):
    """Log the account out everywhere: session cookies carry the version they were issued at."""
    with transaction(db):
        db.execute("UPDATE users SET session_version = session_version + 1 WHERE id = ?", (user_id,))


def set_daily_limit(db, user_id, limit):
    """Set the account's own limit; None returns it to the server default."""
    if limit is not None and limit < 0:
        raise AccountError("The daily limit must be 0 or more.")
    with transaction(db):
        db.execute("UPDATE users SET daily_limit = ? WHERE id = ?", (limit, user_id))


def new_webhook_secret():
    return WEBHOOK_SECRET_PREFIX + secrets.token_hex(32)


def webhook_secret(db, user_id):
    """The account's webhook signing secret, made on first use; None for an unknown account.

    Stored as it is, unlike the API key: the server signs with it, so it must know it.
    It is never logged, and shown only on the account's own Dashboard.
    """
    row = db.execute("SELECT webhook_secret FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None or row["webhook_secret"]:
        return row and row["webhook_secret"]
    with transaction(db):  # a racing first use keeps whichever secret was written first
        db.execute("UPDATE users SET webhook_secret = ? WHERE id = ? AND webhook_secret IS NULL",
                   (new_webhook_secret(), user_id))
    return db.execute("SELECT webhook_secret FROM users WHERE id = ?", (user_id,)).fetchone()["webhook_secret"]


def rotate_webhook_secret(db, user_id):
    """A new signing secret: every delivery from this commit on is signed with it, and only with it."""
    secret = new_webhook_secret()
    with transaction(db):
        db.execute("UPDATE users SET webhook_secret = ? WHERE id = ?", (secret, user_id))
    return secret
