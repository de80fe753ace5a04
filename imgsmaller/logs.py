"""Makes every log record safe to write: API keys redacted, control characters escaped; and the
JSON-lines format (LOG_FORMAT=json). Stdlib only.

Two threats, both from text a client controls (a path, a query string, a header):
- secrets: an API key passed as ?api_key= (or quoted in any message) is replaced by
  "[redacted]";
- log forging: a "%0a" in a path once wrote a whole forged line ("Log-in throttled
  for <any IP>", the very line fail2ban-style tools read; issue 14, finding 11).
  Line breaks, every other C0/C1 control character (ESC, so ANSI escape sequences
  too), DEL and the Unicode line separators are written as escapes (\\n, \\x1b,
  \\u2028). A traceback keeps its lines, each indented, so that no line of it can
  pass for a record of its own.

Where it applies. A filter on a logger does not see records of its child loggers,
so the app's tree (`imgsmaller` and every `imgsmaller.*` logger, present or future,
whatever handlers are added later) is covered by a handler on the `imgsmaller`
logger: handlers run child-first, so this one rewrites each record before it
propagates to the root logger's handlers. werkzeug and waitress log on their own
loggers, which get the filter directly (werkzeug's development server escapes its
request line itself and colours it with ANSI codes, which are kept).

And one volume limit: waitress's "Task queue depth is N" warning, written for every request
that waits for a free thread (under load, a line per request, while waitress holds its task
lock), passes once per QUEUE_WARNING_EVERY_S, saying how many such lines were held back.
"""

import json
import logging
import re
import threading
import time
from datetime import UTC, datetime

_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)
# A key quoted anywhere else (accounts.py: "isk_" + 64 hex digits).
_BARE_KEY = re.compile(r"\bisk_[0-9a-f]{64}\b", re.IGNORECASE)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# werkzeug's own colouring of its request line: "ESC[" digits/semicolons "m".
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_DONE = "_imgsmaller_safe"


def _escape_char(match):
    return match.group().encode("unicode_escape").decode("ascii")


def escape_control(text, *, keep_sgr=False):
    """`text` with control characters written as escapes; `keep_sgr` spares colour codes."""
    if text.isascii() and text.isprintable():  # the usual line: nothing to escape (checked in C)
        return text
    if not keep_sgr:
        return _UNSAFE.sub(_escape_char, text)
    out, last = [], 0
    for match in _SGR.finditer(text):
        out += [_UNSAFE.sub(_escape_char, text[last:match.start()]), match.group()]
        last = match.end()
    return "".join(out) + _UNSAFE.sub(_escape_char, text[last:])


def redact(text):
    lowered = text.lower()
    if "api_key=" in lowered:
        text = _API_KEY_IN_URL.sub(r"\1[redacted]", text)
    if "isk_" in lowered:
        text = _BARE_KEY.sub("isk_[redacted]", text)
    return text


class SafeLogRecords(logging.Filter):
    """Rewrites a record in place: message redacted and escaped; traceback redacted and indented."""

    def __init__(self, *, keep_sgr=False):
        super().__init__()
        self.keep_sgr = keep_sgr

    def filter(self, record):
        if getattr(record, _DONE, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's own error report
            return True
        record.msg, record.args = escape_control(redact(message), keep_sgr=self.keep_sgr), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _indented(record.exc_text)
        if record.stack_info:
            record.stack_info = _indented(record.stack_info)
        setattr(record, _DONE, True)
        return True


# One "Task queue depth" warning per this many seconds (logging one per queued request cost the
# request threads a fifth of /api/v1/info's throughput under wrk: issue 11).
QUEUE_WARNING_EVERY_S = 10.0


class OncePerInterval(logging.Filter):
    """Lets one record through per `seconds`; the next one to pass says how many were held back."""

    def __init__(self, seconds=QUEUE_WARNING_EVERY_S, clock=time.monotonic):
        super().__init__()
        self.seconds, self.clock = seconds, clock
        self.next_at, self.held = None, 0
        self.lock = threading.Lock()

    def filter(self, record):
        now = self.clock()
        with self.lock:
            if self.next_at is not None and now < self.next_at:
                self.held += 1
                return False
            held, self.held, self.next_at = self.held, 0, now + self.seconds
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} more held back in {self.seconds:g} s)", None
        return True


def _indented(text):
    lines = redact(text).split("\n")
    return "\n".join("    " + escape_control(line) for line in lines)


class _SanitisingHandler(logging.Handler):
    """Writes nothing: its filter rewrites records on their way up to the root's handlers."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.addFilter(SafeLogRecords())
        self._tree = logging.getLogger("imgsmaller")  # once: getLogger takes logging's global lock

    def handle(self, record):
        # Only the filter: Handler.handle would also take this handler's lock around an emit
        # that writes nothing (a lock that 8 request threads met on every log line, issue 11).
        self.filter(record)
        # Being a handler, this one would silence logging.lastResort (warnings to
        # stderr when nothing else is configured): keep that behaviour.
        logger = self._tree
        if logger.propagate and not _has_handlers_above(logger) and logging.lastResort \
                and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)
        return True

    def emit(self, record):
        pass


def _has_handlers_above(logger):
    logger = logger.parent
    while logger is not None:
        if logger.handlers:
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# The access line's fields (ops.py), written as their own keys in JSON.
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
# A job's memory line's fields (job_memory.py).
JOB_FIELDS = ("job_id", "memory_estimate_mb", "memory_peak_mb")


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id (+ the access or job fields, exception).

    The records were already redacted and escaped by SafeLogRecords; the message, path and
    traceback are redacted again here, so that a logger outside the filtered ones cannot leak
    a key either. json.dumps escapes every control character: a record is always one line."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in ACCESS_FIELDS + JOB_FIELDS:
            if hasattr(record, name):
                value = getattr(record, name)
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        return json.dumps(entry)


class TextLines(logging.Formatter):
    """logging.Formatter's text, with the date and time part of `asctime` made once per second
    (localtime and strftime on every line were a tenth of an access line's cost, issue 11)."""

    _second = None  # (whole second, its "%Y-%m-%d %H:%M:%S" text in local time)

    def formatTime(self, record, datefmt=None):
        if datefmt is not None or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        whole = int(record.created)
        cached = self._second
        if cached is None or cached[0] != whole:
            cached = self._second = (whole, time.strftime(self.default_time_format, time.localtime(whole)))
        return self.default_msec_format % (cached[1], record.msecs)


def use_format(log_format, logger=None):
    """Give the handlers of `logger` (the root logger) the LOG_FORMAT's formatter: `text` or `json`."""
    formatter = JsonLines() if log_format == "json" else TextLines(TEXT_FORMAT)
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(formatter)


def init_app(app):
    # Flask creates app.logger on first use and gives it a handler of its own only if
    # none is found above it: created before ours, so that choice is unchanged.
    flask_logger = app.logger
    tree = logging.getLogger("imgsmaller")
    if not any(isinstance(h, _SanitisingHandler) for h in tree.handlers):
        tree.addHandler(_SanitisingHandler())
    # werkzeug's development server logs each request line, query string included.
    loggers = [("werkzeug", True), ("waitress", False), ("waitress.queue", False)]
    if not flask_logger.name.startswith("imgsmaller."):
        loggers.append((flask_logger.name, False))
    for name, keep_sgr in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SafeLogRecords) for f in logger.filters):
            logger.addFilter(SafeLogRecords(keep_sgr=keep_sgr))
    queue = logging.getLogger("waitress.queue")
    if not any(isinstance(f, OncePerInterval) for f in queue.filters):
        queue.addFilter(OncePerInterval())
