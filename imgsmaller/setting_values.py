"""How each setting's value is read and checked, in words a person understands. Imports only the stdlib.

Each parser takes the raw value (from instance/config.py, or an environment variable
parsed as JSON where it parses) and returns the value, or raises ValueError saying what
was expected ("must be a whole number"), which settings.py turns into a SettingsError
naming the setting.
"""

import ipaddress
import re
import urllib.parse


def integer(minimum):
    def parse(value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("must be a whole number")
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def positive_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number greater than 0")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number greater than 0") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("must be a number greater than 0")
    return number


def boolean(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def optional_text(value):
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def proxy_address(value):
    # waitress compares the peer's numeric address as text: a host name would never match.
    text = optional_text(value)
    if text == "*":
        return text
    try:
        return str(ipaddress.ip_address(text or ""))
    except ValueError:
        raise ValueError("must be an IP address (like 127.0.0.1) or *") from None


def log_format(value):
    text = str(value).strip().lower()
    if text not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return text


LOG_FORMATS = ("text", "json")


def public_url(value):
    text = optional_text(value)
    if text is None:
        return None
    if not text.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return text.rstrip("/")


def storage_url(value):
    # A bucket name per S3's rules: 3-63 lower-case letters, digits, dots and hyphens.
    text = optional_text(value)
    if text is None:
        return None
    if not text.startswith("s3://"):
        raise ValueError("must be empty (the folder STORAGE_DIR) or s3://BUCKET/optional/prefix")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError("names no bucket: use s3://BUCKET/optional/prefix")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"bucket {bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    if any(part in (".", "..") for part in prefix.split("/")) or "\\" in prefix:
        raise ValueError("the prefix must not contain . or .. segments or backslashes")
    return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")


def choice(*choices):
    def parse(value):
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError("must be " + " or ".join(choices))
        return text

    return parse


def database_url(value):
    """Empty, or a PostgreSQL URL with a database name and (if given) a numeric port."""
    text = optional_text(value)
    if text is None:
        return None
    problem = "must be empty (SQLite at DATABASE) or like postgresql://user@host:5432/dbname"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError(problem)
    return text


MEMORY_FALLBACK_MB = 1024  # JOB_MEMORY_MB where /proc/meminfo cannot be read (not Linux)


def default_job_memory_mb(meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup/memory.max"):
    """Half of the machine's memory in MiB: MemTotal, or a container's (cgroup v2) limit when lower;
    MEMORY_FALLBACK_MB where neither can be read."""
    total = None
    try:
        with open(meminfo, encoding="ascii") as file:
            total = next((int(line.split()[1]) * 1024 for line in file if line.startswith("MemTotal:")), None)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(cgroup, encoding="ascii") as file:
            limit = int(file.read().strip())  # "max" (no limit) does not parse
        total = limit if total is None else min(total, limit)
    except (OSError, ValueError):
        pass
    return MEMORY_FALLBACK_MB if total is None else max(1, total // (1 << 20) // 2)
