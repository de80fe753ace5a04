"""Every server setting, once: name, default, help and validation. Imports only the stdlib.

Values come from `instance/config.py` and from `IMGSMALLER_<NAME>` environment
variables (the variable wins), parsed as JSON where they parse, like Flask's
`from_prefixed_env`. `load_settings` is called once, by `create_app`.
"""

import difflib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import setting_values as values
from .setting_values import default_job_memory_mb

ENV_PREFIX = "IMGSMALLER_"
# Variables of the same prefix that are not server settings: the batch client's
# (imgsmaller.client) and the test suite's addresses of PostgreSQL and S3.
NOT_SETTINGS = ("IMGSMALLER_API_KEY", "IMGSMALLER_URL")
NOT_SETTINGS_PREFIX = "IMGSMALLER_TEST_"


class SettingsError(Exception):
    """A setting has a value the service cannot start with; the message names it."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]


SETTINGS = [
    Setting("DATABASE", None,
            "Path of the SQLite database file. Default: `instance/imgsmaller.sqlite3`.",
            values.optional_text),
    Setting("DATABASE_URL", None,
            "PostgreSQL instead of SQLite: `postgresql://user:password@host:5432/dbname` (PostgreSQL 15+). Empty: the "
            "SQLite file at DATABASE. See \"PostgreSQL\".",
            values.database_url),
    Setting("STORAGE_DIR", None,
            "Folder for uploaded inputs and results. Default: `instance/storage`.",
            values.optional_text),
    Setting("STORAGE_URL", None,
            "Empty: files in STORAGE_DIR. `s3://BUCKET/optional/prefix`: objects in that bucket of an S3-compatible "
            "store (see \"S3-compatible storage\").",
            values.storage_url),
    Setting("S3_ENDPOINT_URL", None,
            "The S3 server's URL (e.g. `https://s3.example.net`). Empty: AWS. Path-style addressing is used.",
            values.public_url),
    Setting("S3_REGION", None,
            "The bucket's region (e.g. `eu-west-1`). Empty: from the AWS configuration (AWS_REGION, the profile).",
            values.optional_text),
    Setting("STORAGE_DOWNLOAD", "proxy",
            "`proxy`: the app streams each download. `redirect` (S3 only): 302 to a presigned URL valid for 5 minutes,"
            " signed per response.",
            values.choice("proxy", "redirect")),
    Setting("DAILY_LIMIT", 100,
            "Accepted compress requests per account per UTC day (an account may override it).",
            values.integer(0)),
    Setting("UPLOAD_MAX_MB", 10,
            "Largest accepted image in MiB, for uploads, base64 and URLs alike (413 above).",
            values.positive_number),
    Setting("MAX_PIXELS", 50_000_000,
            "Largest accepted image in pixels (width × height); 422 above, checked before decoding.",
            values.integer(1)),
    Setting("WORKERS", os.cpu_count() or 1,
            "Job slots of this process, each running jobs one at a time in its own child process (0: a web node that "
            "runs no jobs; see \"Scaling out\"). Default: the CPU count.",
            values.integer(0)),
    Setting("JOB_MEMORY_MB", None,
            "Memory in MiB that the running jobs of one process (`serve` or `worker`) may take at once, by each job's "
            "estimate from its pixels and output format (a 12 MP photo as JPEG: about 250, as AVIF 400). A job that "
            "does not fit waits in the queue, and so do the jobs behind it; one bigger than all of it runs alone. "
            "Default: half the machine's memory (or of the container's limit).",
            values.positive_number),
    Setting("RESULT_TTL_HOURS", 24,
            "Hours a result and its input are kept; after that downloads answer 410.",
            values.positive_number),
    Setting("PUBLIC_URL", None,
            "Base URL used in links (e.g. `https://img.example.com`). Default: the request's scheme and host.",
            values.public_url),
    Setting("SECRET_KEY", None,
            "Signs session cookies. Default: generated once into `instance/secret_key`.",
            values.optional_text),
    Setting("FETCH_TIMEOUT_S", 10,
            "Total time limit in seconds for fetching a `file_url`, redirects included.",
            values.positive_number),
    Setting("FETCH_MAX_CONCURRENT", 4,
            "`file_url` fetches running at once in one process, all accounts together; 503 with Retry-After above.",
            values.integer(1)),
    Setting("FETCH_MAX_CONCURRENT_PER_ACCOUNT", 2,
            "`file_url` fetches running at once for one account in one process; 429 with Retry-After above.",
            values.integer(1)),
    Setting("VALIDATION_MAX_MB_IN_FLIGHT", 400,
            "Memory in MiB that one process may spend at once decoding uploads to check them before the 202 (a 50 MP "
            "JPEG or PNG needs 200, WebP 950, AVIF 600, HEIC 550); a request over it waits up to 2 s, then gets 503 "
            "with Retry-After. An image needing more than all of it is checked alone.",
            values.positive_number),
    Setting("REFUSED_IMAGES_MAX_PER_HOUR", 60,
            "Uploads refused as invalid (422 after decoding) per account per hour before that account's compress "
            "requests get 429 (shared by every process on the database).",
            values.integer(1)),
    Setting("FETCH_ALLOW_PRIVATE", False,
            "Let `file_url` reach private and loopback addresses. Only for a trusted private network.",
            values.boolean),
    Setting("TRUSTED_PROXIES", 0,
            "Number of reverse proxies in front whose X-Forwarded-For and X-Forwarded-Proto `flask --app app serve` "
            "tells waitress to trust (0: none). See \"Running in production\".",
            values.integer(0)),
    Setting("TRUSTED_PROXY_ADDRESS", "127.0.0.1",
            "The address the reverse proxy connects from; forwarded headers from any other peer are dropped (`*`: any "
            "peer).",
            values.proxy_address),
    Setting("JOB_TIMEOUT_S", 300,
            "Seconds a compression job may run before it is failed as taking too long.",
            values.positive_number),
    Setting("JOB_LEASE_S", 60,
            "Seconds a worker's claim on a running job lasts unless renewed (every third of it): a job whose worker "
            "died runs again elsewhere within about 1⅓ × this. At least 3.",
            values.integer(3)),
    Setting("SHUTDOWN_GRACE_S", 30,
            "Seconds a stopping `serve` or `worker` (SIGTERM) lets running jobs finish before it puts them back in the"
            " queue.",
            values.integer(0)),
    Setting("CLEANUP_INTERVAL_S", 300,
            "Seconds between runs of the background expiry of old results and job recovery.",
            values.positive_number),
    Setting("SIGNUP_OPEN", True,
            "Let anyone create an account on the sign-up page. Set false for a private install (add accounts with the "
            "CLI).",
            values.boolean),
    Setting("LOGIN_MAX_FAILURES", 10,
            "Failed log-ins for one email from one client address within LOGIN_LOCKOUT_S before that address gets 429 "
            "for it.",
            values.integer(1)),
    Setting("LOGIN_MAX_FAILURES_PER_ADDRESS", 30,
            "Failed log-ins from one client address (an IPv6 /64), all emails together, within LOGIN_LOCKOUT_S before "
            "it gets 429.",
            values.integer(1)),
    Setting("LOGIN_MAX_FAILURES_PER_EMAIL", 100,
            "Failed log-ins for one email from all addresses within LOGIN_LOCKOUT_S before each further try must wait "
            "1, 2, 4 … seconds (at most LOGIN_LOCKOUT_S).",
            values.integer(1)),
    Setting("LOGIN_LOCKOUT_S", 900,
            "Seconds a failed log-in counts against the three log-in limits (shared by every process on the database).",
            values.positive_number),
    Setting("SIGNUP_MAX_PER_ADDRESS_PER_HOUR", 5,
            "Sign-up attempts per client address per hour (an \"already exists\" answer counts too); 429 above.",
            values.integer(1)),
    Setting("SIGNUP_MAX_PER_HOUR", 100,
            "New accounts per hour on the whole server, from all addresses; sign-up answers 429 above.",
            values.integer(1)),
    Setting("MAX_WAITING_REQUESTS", 4,
            "Compress requests that may hold their answer for `wait` at the same time (each holds a request thread: "
            "keep it at most half of `serve --threads`, 8 by default); others get 202 at once. 0: `wait` is ignored.",
            values.integer(0)),
    Setting("LOG_FORMAT", "text",
            "`text`: one readable line per log record; `json`: one JSON object per line (time, level, logger, message,"
            " request_id; access lines add method, path, status, duration_ms). See \"Logs\".",
            values.log_format),
    Setting("METRICS_TOKEN", None,
            "Bearer token that `/metrics` requires. Unset: `/metrics` answers only requests from this machine that no "
            "proxy relayed (403 otherwise).",
            values.optional_text),
]

SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}


def load_settings(instance_path, config_file_values, environ, *, allow_unknown=False):
    """Return {NAME: value} for every setting: defaults, then config.py, then environment.

    A name that is not a setting stops start-up (a typo would otherwise be ignored
    without a word), unless `allow_unknown` (tests pass Flask's own keys too).
    """
    if not allow_unknown:
        _refuse_unknown_names(config_file_values, environ)
    values = {}
    for setting in SETTINGS:
        raw = setting.default
        source = "default"
        if setting.name in config_file_values:
            raw, source = config_file_values[setting.name], "instance/config.py"
        env_name = ENV_PREFIX + setting.name
        if env_name in environ:
            raw, source = _parse_env_value(environ[env_name]), env_name
        try:
            values[setting.name] = raw if raw is None and source == "default" else setting.parse(raw)
        except (TypeError, ValueError) as error:
            raise SettingsError(f"Setting {setting.name} from {source}: {error} (got {_shown(raw)!r}).") from None
    if values["STORAGE_DOWNLOAD"] == "redirect" and not values["STORAGE_URL"]:
        raise SettingsError("Setting STORAGE_DOWNLOAD=redirect needs an s3:// STORAGE_URL "
                            "(a local folder has no URLs to redirect to).")
    if values["JOB_MEMORY_MB"] is None:  # the machine's, read at start-up rather than at import
        values["JOB_MEMORY_MB"] = default_job_memory_mb()
    _fill_instance_defaults(values, instance_path)
    return values


def _shown(raw):
    """A value for an error message: a URL's password replaced by ***."""
    return re.sub(r"(://[^:@/]*):[^@/]*@", r"\1:***@", raw) if isinstance(raw, str) else raw


def _refuse_unknown_names(config_file_values, environ):
    for name in config_file_values:
        if name not in SETTINGS_BY_NAME:
            raise SettingsError(f"Unknown setting {name} in instance/config.py{_suggestion(name)}.")
    for variable in environ:
        if not variable.startswith(ENV_PREFIX) or variable in NOT_SETTINGS or variable.startswith(NOT_SETTINGS_PREFIX):
            continue
        name = variable[len(ENV_PREFIX):]
        if name not in SETTINGS_BY_NAME:
            raise SettingsError(f"Unknown setting in environment variable {variable}{_suggestion(name)}.")


def _suggestion(name):
    close = difflib.get_close_matches(name.upper(), SETTINGS_BY_NAME, n=1, cutoff=0.6)
    return f": did you mean {close[0]}?" if close else " (see the README's settings table)"


def _parse_env_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fill_instance_defaults(values, instance_path):
    if values["DATABASE"] is None:
        values["DATABASE"] = os.path.join(instance_path, "imgsmaller.sqlite3")
    if values["STORAGE_DIR"] is None:
        values["STORAGE_DIR"] = os.path.join(instance_path, "storage")
    if values["SECRET_KEY"] is None:
        values["SECRET_KEY"] = _instance_secret(instance_path)


def _instance_secret(instance_path):
    """Read the generated secret, creating it (mode 0600) on first start."""
    path = os.path.join(instance_path, "secret_key")
    try:
        with open(path, encoding="ascii") as file:
            secret = file.read().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _instance_secret(instance_path)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secret + "\n")
    return secret


def read_config_file(path):
    """Names in UPPER case from a Python config file, like Flask's `from_pyfile`."""
    if not os.path.exists(path):
        return {}
    namespace = {"__file__": path}
    with open(path, "rb") as file:
        exec(compile(file.read(), path, "exec"), namespace)
    return {key: value for key, value in namespace.items() if key.isupper()}
