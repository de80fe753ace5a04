"""Inputs and results named by job id: the storage interface, the local folder, and `open_storage`.

Callers never see a path or a key. An upload is staged before the database
transaction and committed under its job id inside it (`stage_input`,
`commit_input`, `delete_input` on rollback, `discard_staged` always); results are
written whole or not at all (`save_result`). Reads return a StoredFile, or raise
FileNotFoundError once expiry removed the file. Any other storage failure (disk
full, folder not writable, object store unreachable) is logged and raised as
ServiceUnavailableError (503). Imports only the stdlib and errors; s3_storage.py
is imported only when STORAGE_URL names a bucket.
"""

import logging
import os
import secrets
import time

from .errors import ServiceUnavailableError

log = logging.getLogger(__name__)

TEMP_MAX_AGE_S = 3600  # a temp file this old belongs to a request or job that died
STORAGE_UNAVAILABLE = "Storage is not available right now. Try again later."


def open_storage(config):
    """The storage the settings choose: the folder STORAGE_DIR, or the bucket of STORAGE_URL.

    An S3 bucket is checked here (reachable, credentials accepted, writable), so a bad
    configuration stops start-up with a SettingsError naming the setting."""
    if config.get("STORAGE_URL"):
        from .s3_storage import S3Storage

        return S3Storage.from_config(config)
    return LocalStorage(config["STORAGE_DIR"])


class StoredFile:
    """An open stored input or result: `read(n)`, `close()`, its `size` in bytes; a context manager."""

    def __init__(self, file, size):
        self.file = file
        self.size = size

    def read(self, size=-1):
        return self.file.read(size)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class LocalStorage:
    """Files under one folder: `inputs/<id>`, `results/<id>`, and `tmp/` for writes in progress.

    Every write goes to `tmp/` first and is moved into place with os.replace, so a
    reader never sees a half-written file."""

    redirects = False  # downloads are always streamed by the app

    def __init__(self, root):
        self.root = os.path.abspath(root)

    # Paths exist for this class and its tests only; no caller outside storage builds one.
    def input_path(self, job_id):
        return os.path.join(self.root, "inputs", str(int(job_id)))

    def result_path(self, job_id):
        return os.path.join(self.root, "results", str(int(job_id)))

    def _write_temp(self, data):
        """Write bytes to a new temp file and return its path."""
        path = None
        try:
            folder = os.path.join(self.root, "tmp")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, secrets.token_hex(16) + ".part")
            with open(path, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            return path
        except OSError as error:
            self._remove(path)
            log.error("Cannot write to storage %s: %s", self.root, error)
            raise ServiceUnavailableError() from error

    def _move_into_place(self, temp_path, final_path):
        try:
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            os.replace(temp_path, final_path)
        except OSError as error:
            self._remove(temp_path)
            log.error("Cannot move a file into %s: %s", final_path, error)
            raise ServiceUnavailableError() from error

    def _remove(self, path):
        """Remove a file; True when it is gone (or never was), False when it could not be removed."""
        if not path:
            return True
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("Cannot remove %s: %s", path, error)
            return False
        return True

    # -- inputs: staged before the transaction, committed inside it ------------------

    def stage_input(self, data):
        """Write the upload aside; returns a handle for commit_input and discard_staged."""
        return self._write_temp(data)

    def commit_input(self, staged, job_id):
        self._move_into_place(staged, self.input_path(job_id))

    def discard_staged(self, staged):
        self._remove(staged)  # nothing left once committed

    def delete_input(self, job_id):
        """Undo commit_input when the transaction that inserted the job rolled back."""
        self._remove(self.input_path(job_id))

    def open_input(self, job_id):
        return self._open(self.input_path(job_id))

    def read_input(self, job_id):
        with self.open_input(job_id) as stored:
            return stored.read()

    # -- results ---------------------------------------------------------------------

    def save_result(self, job_id, data):
        self._move_into_place(self._write_temp(data), self.result_path(job_id))

    def open_result(self, job_id):
        return self._open(self.result_path(job_id))

    def has_result(self, job_id):
        return os.path.exists(self.result_path(job_id))

    def delete_result(self, job_id):
        self._remove(self.result_path(job_id))

    def _open(self, path):
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            raise
        except OSError as error:
            log.error("Cannot read %s: %s", path, error)
            raise ServiceUnavailableError(STORAGE_UNAVAILABLE) from error
        return StoredFile(file, os.fstat(file.fileno()).st_size)

    # -- expiry and health -----------------------------------------------------------

    def delete_job_files(self, job_id):
        """Delete a job's input and result; False when one could not be deleted (try again later)."""
        removed_input = self._remove(self.input_path(job_id))
        return self._remove(self.result_path(job_id)) and removed_input

    def check_ready(self):
        """Raise ServiceUnavailableError unless a file can be written (a full disk, a read-only mount)."""
        self._remove(self._write_temp(b""))

    def remove_stale_temp_files(self, now=None):
        now = now or time.time()
        folder = os.path.join(self.root, "tmp")
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.name.endswith(".part") and now - entry.stat().st_mtime > TEMP_MAX_AGE_S:
                    self._remove(entry.path)
            except OSError:
                continue
