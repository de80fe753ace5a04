"""The batch client: compress files and folders through an ImgSmaller server, resumably.

    python -m imgsmaller.client compress [--target SIZE|auto] [--output FMT] [--out DIR] PATH...
    python -m imgsmaller.client info

Imports only the standard library and requests, never another part of imgsmaller, so
this one file also works copied alone onto another machine (`python client.py info`).

What it promises, and how:
- No work twice, no quota twice. A JSON-lines state file in --out records, per source
  file, its size, mtime and SHA-256, the options, and the job's progress_key as soon as
  the server answers 202 (fsync'd: that line is what a lost key would cost). A re-run
  skips files done with the same options, re-polls jobs already queued instead of sending
  them again, and sends only the rest. One client per --out at a time (a lock file).
- A daily limit that runs out (429) stops new uploads; already-queued jobs are still
  collected and the rest are reported as not done. A short Retry-After is waited out.
- Connection errors and 5xx are retried a bounded number of times with backoff. Each compress
  request carries an Idempotency-Key of its own, the same on its retries, so one whose answer
  was lost to a dropped connection is sent again and answered with the first job, not charged
  twice (by a server that knows the header; the hosted service's contract does not have it).
  One that timed out waiting for its answer is not sent again in the same run.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import uuid
from dataclasses import dataclass

import requests

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one client per --out is then up to the user
    fcntl = None

DEFAULT_SERVER = "http://127.0.0.1:5000"
STATE_NAME = ".imgsmaller-client.jsonl"
LOCK_NAME = ".imgsmaller-client.lock"
FORMATS = ("jpeg", "png", "webp", "avif")
OUTPUTS = ("jpeg", "jpg", "png", "webp", "avif", "original")
KEEP_METADATA = ("none", "copyright", "all", "all_with_location")  # the server's keep_metadata choices
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif"}
# Inputs sent but never written: `original` of a HEIC or HEIF comes back as JPEG (browsers do not show HEIC).
ORIGINAL_OUTPUT = {"heic": "jpeg", "heif": "jpeg"}
HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
# Extensions that already name a format: photo.jpeg compressed to JPEG stays photo.jpeg.
ALIASES = {"jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"), "png": (".png",), "webp": (".webp",), "avif": (".avif",)}
TARGET = re.compile(r"^\s*(auto|(\d+(\.\d+)?|\.\d+)\s*(b|kb|mb))\s*$", re.IGNORECASE)

ATTEMPTS = 5            # per HTTP call: the first try and 4 retries ...
BACKOFF_S = 1.0         # ... after 1, 2, 4 and 8 s: a server restart (~2 s here) is ridden out
MAX_RETRY_AFTER_S = 60  # a longer 429 Retry-After is the daily limit: stop, don't sleep for hours
RETRIES_429 = 3         # short 429s waited out per call before giving up
POLL_FIRST_S = 0.2      # a small image is done in ~20 ms of server time, a big AVIF in seconds;
POLL_MAX_S = 2.0        # polls start quick and slow down 1.5x each time up to this
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 120    # waitress's own channel timeout; no answer of this API takes longer


class ClientError(Exception):
    """One file (or the `info` call) failed; the message is for the user."""


class AuthError(ClientError):
    """401: the key is wrong or was rotated; nothing else can succeed."""


class QuotaExhausted(ClientError):
    """429 with a long (or no) Retry-After: the account's daily limit is used up."""


class Stopped(Exception):
    """Interrupted (Ctrl-C) or stopped by a fatal error while waiting."""


def error_message(response):
    """'HTTP 422: <the server's message>' from any error answer, JSON or not."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {response.status_code}: {message or response.reason or 'no message'}"


def retry_after(response):
    try:
        return max(0, int(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date: treat as long


class Api:
    """HTTP calls to one server with one key; retries; one requests.Session per thread."""

    def __init__(self, server, key, *, stop, max_retry_after_s=MAX_RETRY_AFTER_S):
        self.server = server.rstrip("/")
        self.key = key
        self.stop = stop
        self.max_retry_after_s = max_retry_after_s
        self._local = threading.local()
        self._sessions = []

    def session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["User-Agent"] = f"imgsmaller-client requests/{requests.__version__}"
            self._sessions.append(session)
        return session

    def close(self):
        for session in self._sessions:
            session.close()

    def request(self, method, url, *, resend_after_timeout=True, **kwargs):
        """The response of one call, after retrying connection errors and 5xx, and waiting out short 429s.

        Raises AuthError (401), QuotaExhausted (a long 429), ClientError (retries used up),
        Stopped (interrupted while waiting). Any other answer is returned as it is.
        """
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        waited_429 = 0
        for attempt in range(1, ATTEMPTS + 1):
            last = attempt == ATTEMPTS
            delay = BACKOFF_S * 2 ** (attempt - 1)
            try:
                response = self.session().request(method, url, **kwargs)
            except requests.ReadTimeout as error:
                if last or not resend_after_timeout:
                    raise ClientError(f"no answer from the server in time ({error.__class__.__name__})") from None
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                if last:
                    raise ClientError(f"cannot reach {self.server}: {short(error)}") from None
            except requests.RequestException as error:  # bad URL and the like: retrying cannot help
                raise ClientError(f"request failed: {short(error)}") from None
            else:
                status = response.status_code
                if status == 401:
                    raise AuthError(error_message(response))
                if status == 429:
                    wait = retry_after(response)
                    if wait is None or wait > self.max_retry_after_s or waited_429 >= RETRIES_429:
                        raise QuotaExhausted(error_message(response))
                    waited_429 += 1
                    delay = wait
                elif status >= 500 and not last:
                    wait = retry_after(response)
                    if wait is not None and wait <= self.max_retry_after_s:
                        delay = wait
                else:
                    return response
                response.close()
            if self.stop.wait(delay):
                raise Stopped()
        raise AssertionError("unreachable")

    def info(self):
        response = self.request("GET", self.server + "/api/v1/info", headers={"X-API-Key": self.key})
        if response.status_code != 200:
            raise ClientError(error_message(response))
        return response.json()

    def compress(self, name, data, fields, wait):
        timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S + (wait or 0))
        headers = {"X-API-Key": self.key, "Idempotency-Key": str(uuid.uuid4())}  # the same on each retry
        return self.request("POST", self.server + "/api/v1/compress", headers=headers,
                            files={"file": (name, data)}, data=fields, timeout=timeout,
                            resend_after_timeout=False)

    def result(self, progress_key):
        return self.request("GET", f"{self.server}/result/{progress_key}")

    def download(self, url, path, expected_bytes):
        """Stream `url` into `path` through a temp file; the HTTP status when it is not 200."""
        for attempt in range(1, ATTEMPTS + 1):
            response = self.request("GET", url, stream=True)
            with response:
                if response.status_code != 200:
                    return response.status_code, error_message(response)
                temp = path + ".part"
                try:
                    with open(temp, "wb") as file:
                        for chunk in response.iter_content(64 * 1024):
                            file.write(chunk)
                        size = file.tell()
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                    problem = f"download interrupted: {short(error)}"
                else:
                    if size == expected_bytes:
                        os.replace(temp, path)
                        return 200, None
                    problem = f"download cut short: {size} of {expected_bytes} bytes"
                remove(temp)
            if attempt == ATTEMPTS:
                raise ClientError(problem)
            if self.stop.wait(BACKOFF_S * 2 ** (attempt - 1)):
                raise Stopped()
        raise AssertionError("unreachable")


def short(error):
    """The innermost reason of a requests error, without urllib3's long object reprs."""
    text = str(error)
    match = re.search(r"\(Caused by \w+\((.*)\)\)", text)
    return (match.group(1) if match else text)[:200]


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class State:
    """What this client did for each source file, kept in --out so that a re-run resumes.

    A JSON-lines file: each line sets some fields of one source file's entry; later lines
    win. A line per event is appended (7 us; 0.8 ms with fsync), where rewriting the whole
    file would cost 180 ms per event for 10,000 files (4.3 MB) - an hour over a batch. At
    start and end it is compacted to one line per entry through a temp file and os.replace.
    A crash can leave only a torn last line, which load skips.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, STATE_NAME)
        self.entries = {}
        self._lock = threading.Lock()
        self._file = None

    def load(self):
        try:
            file = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with file:
            for line in file:
                try:
                    record = json.loads(line)
                    source = record.pop("source")
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn last line, or a hand edit
                if record.get("forget"):
                    self.entries.pop(source, None)
                elif isinstance(source, str):
                    self.entries.setdefault(source, {}).update(record)

    def compact(self):
        with self._lock:
            if self._file:
                self._file.close()
            temp = self.path + ".tmp"
            with open(temp, "w", encoding="utf-8") as file:
                for source, entry in sorted(self.entries.items()):
                    file.write(json.dumps({"source": source, **entry}) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self):
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None

    def set(self, source, *, durable=False, **fields):
        with self._lock:
            self.entries.setdefault(source, {}).update(fields)
            self._append({"source": source, **fields}, durable)

    def forget(self, source):
        with self._lock:
            if self.entries.pop(source, None) is not None:
                self._append({"source": source, "forget": True}, False)

    def _append(self, record, durable):
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # one write(2) per line: a killed process leaves whole lines
        if durable:
            os.fsync(self._file.fileno())  # and a power cut keeps the progress_key of a charged job


def lock_folder(folder):
    """Hold an exclusive lock on --out for this process's life, or raise ClientError."""
    if fcntl is None:
        return None
    handle = open(os.path.join(folder, LOCK_NAME), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ClientError(f"another client is already writing into {folder}") from None
    return handle


def sniff(path):
    """The image format of a file from its magic bytes (like the server's), or None."""
    with open(path, "rb") as file:
        head = file.read(256)
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        brands = head[8:min(max(int.from_bytes(head[:4], "big"), 16), 256)]
        brands = [brands[i:i + 4] for i in range(0, len(brands) - 3, 4)]
        if any(brand in (b"avif", b"avis") for brand in brands):
            return "avif"
        if any(brand in HEIC_BRANDS for brand in brands):
            return "heic"
        if any(brand in (b"mif1", b"msf1", b"mif2") for brand in brands):
            return "heif"
    return None


@dataclass
class Item:
    """One source file to compress, and where its result goes (relative to --out)."""

    source: str   # absolute real path: the key of its state entry
    rel: str      # path shown to the user and mirrored under --out
    format: str   # sniffed input format
    dest: str     # relative output path for the expected output format
    expected: str  # that format


def output_name(rel, fmt):
    stem, ext = os.path.splitext(rel)
    return rel if ext.lower() in ALIASES[fmt] else stem + EXTENSIONS[fmt]


def collect(paths, out_dir, output):
    """(items, number of non-image files skipped) for PATH arguments: files, or folders walked."""
    out_real = os.path.realpath(out_dir)
    found, seen, skipped = [], set(), 0
    for arg in paths:
        if os.path.isdir(arg):
            for root, dirs, files in os.walk(arg):
                # Hidden folders (.git) and --out itself, when it lies inside, are not inputs.
                dirs[:] = sorted(d for d in dirs
                                 if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != out_real)
                for name in sorted(files):
                    if not name.startswith("."):
                        path = os.path.join(root, name)
                        found.append((path, os.path.relpath(path, arg)))
        elif os.path.isfile(arg):
            found.append((arg, os.path.basename(arg)))
        else:
            raise ClientError(f"{arg}: no such file or folder")
    items, taken = [], set()
    for path, rel in found:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            fmt = sniff(path)
        except OSError as error:
            print(f"skipped {rel}: {error.strerror}", file=sys.stderr)
            fmt = None
        if fmt is None:
            skipped += 1
            continue
        expected = ORIGINAL_OUTPUT.get(fmt, fmt) if output == "original" else output
        dest = output_name(rel, expected)
        if dest.casefold() in taken:  # photo.png and photo.jpg, both to WebP
            stem, ext = os.path.splitext(dest)
            dest = f"{stem}-{os.path.splitext(rel)[1].lstrip('.').lower()}{ext}"
            counter = 2
            while dest.casefold() in taken:
                dest, counter = f"{stem}-{counter}{ext}", counter + 1
        taken.add(dest.casefold())
        items.append(Item(real, rel.replace(os.sep, "/"), fmt, dest, expected))
    return items, skipped


@dataclass
class Outcome:
    kind: str     # "done" now, "earlier" (a previous run), "failed", "not done"
    item: Item
    before: int = 0
    after: int = 0
    message: str = ""


def file_facts(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Batch:
    """Runs the items on N threads, each file end to end: submit or re-poll, poll, download."""

    def __init__(self, api, state, out_dir, options, *, wait, retry_failed, progress):
        self.api, self.state, self.out_dir = api, state, out_dir
        self.options = options  # {"target": ..., "output": ...}: part of what "done" means
        self.wait, self.retry_failed, self.progress = wait, retry_failed, progress
        self.stop = api.stop
        self.quota_message = None
        self.fatal = None
        self.outcomes = []
        self._lock = threading.Lock()

    def run(self, items, jobs):
        # Jobs already queued on the server go first: they cost nothing and their results expire.
        pending = sorted(items, key=lambda item: self.state.entries.get(item.source, {}).get("status") != "queued")
        queue = iter(pending)
        threads = [threading.Thread(target=self._work, args=(queue,), daemon=True)
                   for _ in range(min(jobs, len(items)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins, so Ctrl-C reaches the main thread at once

    def _work(self, queue):
        while not self.stop.is_set():  # stopped: files not started stay out of the report
            with self._lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                outcome = self.process(item)
            except Stopped:
                outcome = Outcome("not done", item, message=self.fatal or "interrupted")
            except AuthError as error:
                self.fatal = self.fatal or str(error)
                self.stop.set()
                outcome = Outcome("not done", item, message=str(error))
            except ClientError as error:
                outcome = Outcome("failed", item, message=str(error))
            except OSError as error:  # the source file vanished or cannot be read; --out not writable
                outcome = Outcome("failed", item, message=f"{error.strerror}: {error.filename}")
            except Exception as error:  # a bug: report it on this file, keep the batch going
                outcome = Outcome("failed", item, message=f"client error: {error!r}")
            with self._lock:
                self.outcomes.append(outcome)
            self.progress.update(outcome)

    def process(self, item):
        if self.stop.is_set():
            raise Stopped()
        entry = self.state.entries.get(item.source)
        if entry is not None and not self.same_request(entry, item):
            self.state.forget(item.source)
            entry = None
        if entry is not None:
            status = entry.get("status")
            if status == "done" and self.output_present(entry):
                return Outcome("earlier", item, entry.get("original_bytes", 0), entry.get("bytes", 0))
            if status == "failed" and not self.retry_failed:
                return Outcome("failed", item, message=f"{entry.get('message')} (an earlier run; "
                                                      "--retry-failed sends it again)")
            if status != "failed" and entry.get("progress_key"):
                outcome = self.follow(item, entry["progress_key"])
                if outcome is not None:
                    return outcome
        return self.submit(item)

    def same_request(self, entry, item):
        """The state entry is about this very file content and these options."""
        if entry.get("options") != self.options:
            return False
        size, mtime_ns = file_facts(item.source)
        if (size, mtime_ns) == (entry.get("size"), entry.get("mtime_ns")):
            return True
        if size != entry.get("size") or sha256_of(item.source) != entry.get("sha256"):
            return False
        self.state.set(item.source, mtime_ns=mtime_ns)  # touched, not changed
        return True

    def output_present(self, entry):
        path = os.path.join(self.out_dir, entry.get("output") or "")
        return os.path.isfile(path) and os.path.getsize(path) == entry.get("bytes")

    def submit(self, item):
        if self.quota_message:
            return Outcome("not done", item, message=f"not sent: {self.quota_message}")
        size, mtime_ns = file_facts(item.source)  # before reading: a later change shows as a new mtime
        with open(item.source, "rb") as file:
            data = file.read()
        fields = {}
        if self.options["target"] != "auto":
            fields["target_size"] = self.options["target"]
        if self.options["output"] != "original":
            fields["output"] = self.options["output"]
        for name in ("max_width", "max_height", "keep_metadata"):  # in the options only when given
            if name in self.options:
                fields[name] = str(self.options[name])
        if self.wait is not None:
            fields["wait"] = f"{self.wait:g}"
        try:
            response = self.api.compress(os.path.basename(item.source), data, fields, self.wait)
        except QuotaExhausted as error:
            self.quota_message = self.quota_message or str(error)
            return Outcome("not done", item, message=str(error))
        if response.status_code not in (200, 202):
            self.state.forget(item.source)  # refused before queueing: no quota used, sent again next time
            return Outcome("failed", item, message=error_message(response))
        body = response.json()
        key = body["progress_key"]
        self.state.set(item.source, durable=True, rel=item.rel, size=size, mtime_ns=mtime_ns,
                       sha256=hashlib.sha256(data).hexdigest(), options=self.options,
                       status="queued", progress_key=key)
        if response.status_code == 200 and body.get("status") == "done":  # --wait, and it was quick
            outcome = self.finish(item, body)
        else:
            outcome = self.follow(item, key)
        if outcome is None:
            raise ClientError("the server lost the job it had just accepted")
        return outcome

    def follow(self, item, key):
        """Poll the job to its end; None when the server no longer has it (expired, other server)."""
        delay = POLL_FIRST_S
        while True:
            response = self.api.result(key)
            if response.status_code in (404, 410):
                return None
            if response.status_code != 200:
                raise ClientError(error_message(response))
            body = response.json()
            if body.get("status") == "done":
                return self.finish(item, body)
            if body.get("status") == "failed":
                message = body.get("message") or "the server could not compress this image"
                self.state.set(item.source, status="failed", message=message)
                return Outcome("failed", item, message=message)
            if self.stop.wait(delay):
                raise Stopped()
            delay = min(delay * 1.5, POLL_MAX_S)

    def finish(self, item, body):
        fmt = body["format"]
        dest = item.dest if fmt == item.expected else output_name(item.rel, fmt)
        path = os.path.join(self.out_dir, dest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        status, message = self.api.download(body["download"], path, body["bytes"])
        if status == 410:
            return None
        if status != 200:
            raise ClientError(message)
        before = body.get("original_bytes") or os.path.getsize(item.source)
        self.state.set(item.source, status="done", output=dest, format=fmt, bytes=body["bytes"],
                       original_bytes=before)
        return Outcome("done", item, before, body["bytes"])


def human(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


class Progress:
    """A one-line bar on a terminal; one plain line per file otherwise (logs, pipes, CI)."""

    def __init__(self, total, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.finished = total, 0
        self.counts = {"done": 0, "earlier": 0, "failed": 0, "not done": 0}
        self.before = self.after = 0
        self._lock = threading.Lock()

    def start(self):
        if self.tty:
            with self._lock:
                self._draw()

    def update(self, outcome):
        with self._lock:
            self.finished += 1
            self.counts[outcome.kind] += 1
            if outcome.kind in ("done", "earlier"):
                self.before += outcome.before
                self.after += outcome.after
            if not self.tty:
                self.stream.write(f"[{self.finished:>{len(str(self.total))}}/{self.total}] {describe(outcome)}\n")
            else:
                # Failures are worth a line each; "not done" (the limit reached) only once.
                if outcome.kind == "failed" or (outcome.kind == "not done" and self.counts["not done"] == 1):
                    self.stream.write("\r\x1b[K" + describe(outcome) + "\n")
                self._draw()
            self.stream.flush()

    def _draw(self):
        width = max(10, min(30, shutil.get_terminal_size().columns - 60))
        filled = width * self.finished // max(self.total, 1)
        counts = "  ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
        sizes = f"  {human(self.before)} -> {human(self.after)}" if self.before else ""
        self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] {self.finished}/{self.total}"
                          f"  {counts}{sizes}")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def describe(outcome):
    rel = outcome.item.rel
    if outcome.kind in ("done", "earlier"):
        saved = f"{100 * (1 - outcome.after / outcome.before):.0f}%" if outcome.before else "-"
        note = " (done earlier)" if outcome.kind == "earlier" else ""
        return f"done     {rel}  {human(outcome.before)} -> {human(outcome.after)}  saved {saved}{note}"
    return f"{outcome.kind:<8} {rel}: {outcome.message}"


def summary(outcomes, skipped, total_items):
    """The closing table: files, bytes before and after, saved %, then each failure and its message."""
    rows = []
    for label, kinds in (("compressed", ("done",)), ("done earlier", ("earlier",)),
                         ("failed", ("failed",)), ("not done", ("not done",))):
        chosen = [o for o in outcomes if o.kind in kinds]
        rows.append((label, chosen))
    done = [o for o in outcomes if o.kind in ("done", "earlier")]
    lines = [f"{'':<14}{'files':>7}{'before':>12}{'after':>12}{'saved':>8}"]
    for label, chosen in rows + [("total", done)]:
        if label in ("failed", "not done"):
            lines.append(f"{label:<14}{len(chosen):>7}")
            continue
        before, after = sum(o.before for o in chosen), sum(o.after for o in chosen)
        saved = f"{100 * (1 - after / before):.1f}%" if before else "-"
        lines.append(f"{label:<14}{len(chosen):>7}{human(before):>12}{human(after):>12}{saved:>8}")
    unfinished = total_items - len(outcomes)
    if unfinished:
        lines.append(f"{'not started':<14}{unfinished:>7}")
    if skipped:
        lines.append(f"skipped       {skipped:>7} (not JPEG, PNG, WebP, AVIF or HEIC)")
    for label, chosen in rows[2:]:
        if chosen:
            lines.append("")
            lines.append(f"{label}:")
            lines.extend(f"  {o.item.rel}: {o.message}" for o in sorted(chosen, key=lambda o: o.item.rel))
    return "\n".join(lines)


def target_size(value):
    if not TARGET.match(value):
        raise argparse.ArgumentTypeError("use 'auto' or a size such as 20KB, 1.5MB or 500000B")
    return "auto" if value.strip().lower() == "auto" else re.sub(r"\s+", "", value).upper()


def positive(kind, low, high):
    def parse(value):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return number
    return parse


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("IMGSMALLER_URL") or DEFAULT_SERVER,
                        help=f"the server's base URL (default: $IMGSMALLER_URL, else {DEFAULT_SERVER})")
    common.add_argument("--key", default=os.environ.get("IMGSMALLER_API_KEY"),
                        help="the API key (default: $IMGSMALLER_API_KEY; prefer the variable, "
                             "a command line is visible to other users)")
    parser = argparse.ArgumentParser(prog="python -m imgsmaller.client",
                                     description="Compress images and folders with an ImgSmaller server.")
    commands = parser.add_subparsers(dest="command", required=True)
    compress = commands.add_parser("compress", parents=[common], help="compress files and folders",
                                   description="Compress files and folders (recursively) into --out, "
                                               "resuming where an earlier run stopped.")
    compress.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    compress.add_argument("--target", type=target_size, default="auto", metavar="SIZE|auto",
                          help="largest output size, e.g. 50KB or 1.5MB, or auto (default)")
    compress.add_argument("--output", choices=OUTPUTS, default="original", metavar="FMT",
                          help="jpeg, png, webp, avif or original (default: keep each file's format; HEIC gives JPEG)")
    compress.add_argument("--max-width", type=positive(int, 1, 10000), default=None, metavar="PX",
                          help="scale each picture down to at most PX pixels wide (never up)")
    compress.add_argument("--max-height", type=positive(int, 1, 10000), default=None, metavar="PX",
                          help="scale each picture down to at most PX pixels high (never up)")
    compress.add_argument("--keep-metadata", choices=KEEP_METADATA, default=None, metavar="WHAT",
                          help="none (default: colour profile only), copyright (artist, copyright, date "
                               "taken), all (all but the GPS position) or all_with_location")
    compress.add_argument("--out", default="compressed", metavar="DIR",
                          help="where results go, with the same relative paths (default: %(default)s)")
    compress.add_argument("--jobs", type=positive(int, 1, 64), default=4, metavar="N",
                          help="files in flight at once (default: %(default)s)")
    compress.add_argument("--wait", type=positive(float, 0.1, 600), default=None, metavar="S",
                          help="ask the server to hold each answer up to S seconds until the result is "
                               "ready (sent only when given; servers without it answer 202 as usual)")
    compress.add_argument("--max-retry-after", type=positive(int, 0, 3600), default=MAX_RETRY_AFTER_S,
                          metavar="S", help="wait out a 429 that clears within S seconds; a longer one "
                                            "means the daily limit is used up (default: %(default)s)")
    compress.add_argument("--retry-failed", action="store_true",
                          help="send again files whose job failed in an earlier run")
    info = commands.add_parser("info", parents=[common], help="the account's remaining quota")
    info.add_argument("--json", action="store_true", help="print the server's JSON answer as it is")
    return parser


def run_info(api, args):
    body = api.info()
    api.close()
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    reset = int(body.get("reset_in_seconds", 0))
    print(f"server     {api.server}")
    print(f"remaining  {body.get('remaining_today')} of {body.get('limit')} today "
          f"(resets at 00:00 UTC, in {reset // 3600}h {reset % 3600 // 60:02d}m)")
    print(f"input      {', '.join(body.get('supported_input', []))}")
    print(f"output     {', '.join(body.get('supported_output', []))}")
    return 0


def run_compress(api, args):
    output = "jpeg" if args.output == "jpg" else args.output
    items, skipped = collect(args.paths, args.out, output)
    info = api.info()  # checks the key and the server before any work
    os.makedirs(args.out, exist_ok=True)
    lock = lock_folder(args.out)
    state = State(args.out)
    interrupted = False
    try:
        state.load()
        state.compact()
        print(f"{len(items)} images to do; {info.get('remaining_today')} of {info.get('limit')} "
              f"requests left today on {api.server}", file=sys.stderr)
        progress = Progress(len(items))
        options = {"target": args.target, "output": output}
        # Only what was given, so that the state of a run without them still matches.
        options.update({name: getattr(args, name) for name in ("max_width", "max_height", "keep_metadata")
                        if getattr(args, name) is not None})
        batch = Batch(api, state, args.out, options, wait=args.wait,
                      retry_failed=args.retry_failed, progress=progress)
        progress.start()
        try:
            batch.run(items, args.jobs)
        except KeyboardInterrupt:
            # The worker threads are daemons and end with the process; until then one may
            # still record a job the server just accepted, so the state file stays open.
            interrupted = True
            api.stop.set()
            progress.close()
            print(f"Interrupted. Jobs already sent are recorded in {state.path}; "
                  "run the same command again to resume.", file=sys.stderr)
            return 130
        progress.close()
        state.compact()
    finally:
        if not interrupted:
            state.close()
        if lock:
            lock.close()
    api.close()
    print(summary(batch.outcomes, skipped, len(items)))
    if batch.fatal:
        print(f"error: {batch.fatal}", file=sys.stderr)
        return 2
    return 0 if all(o.kind in ("done", "earlier") for o in batch.outcomes) else 1


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.key:
        print("error: no API key: set IMGSMALLER_API_KEY or pass --key", file=sys.stderr)
        return 2
    api = Api(args.server, args.key, stop=threading.Event(),
              max_retry_after_s=getattr(args, "max_retry_after", MAX_RETRY_AFTER_S))
    try:
        return run_info(api, args) if args.command == "info" else run_compress(api, args)
    except ClientError as error:  # a bad key, an unreachable server, a missing PATH
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
