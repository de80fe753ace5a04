"""Files on disk: paths built from job ids only, temp-then-rename writes, deletion, expiry.

Every write goes to `tmp/` first and is moved into place with os.replace, so a
reader never sees a half-written file. Any OSError (disk full, folder not
writable) becomes ServiceUnavailableError (503) after the temp file is removed.
"""

import logging
import os
import secrets
import time

from .errors import ServiceUnavailableError

log = logging.getLogger(__name__)

TEMP_MAX_AGE_S = 3600  # a temp file this old belongs to a request or job that died


class Storage:
    def __init__(self, root):
        self.root = os.path.abspath(root)

    def _dir(self, kind):
        path = os.path.join(self.root, kind)
        os.makedirs(path, exist_ok=True)
        return path

    def input_path(self, job_id):
        return os.path.join(self.root, "inputs", str(int(job_id)))

    def result_path(self, job_id):
        return os.path.join(self.root, "results", str(int(job_id)))

    def write_temp(self, data):
        """Write bytes to a new temp file and return its path."""
        path = None
        try:
            path = os.path.join(self._dir("tmp"), secrets.token_hex(16) + ".part")
            with open(path, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            return path
        except OSError as error:
            self.discard(path)
            log.error("Cannot write to storage %s: %s", self.root, error)
            raise ServiceUnavailableError() from error

    def move_into_place(self, temp_path, final_path):
        try:
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            os.replace(temp_path, final_path)
        except OSError as error:
            self.discard(temp_path)
            log.error("Cannot move a file into %s: %s", final_path, error)
            raise ServiceUnavailableError() from error

    def save_result(self, job_id, data):
        self.move_into_place(self.write_temp(data), self.result_path(job_id))

    def open_result(self, job_id):
        """The stored result as an open binary file; FileNotFoundError once expiry removed it."""
        return open(self.result_path(job_id), "rb")

    def open_input(self, job_id):
        return open(self.input_path(job_id), "rb")

    def read_input(self, job_id):
        with open(self.input_path(job_id), "rb") as file:
            return file.read()

    def discard(self, path):
        if path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("Cannot remove %s: %s", path, error)

    def delete_job_files(self, job_id):
        self.discard(self.input_path(job_id))
        self.discard(self.result_path(job_id))

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
                    self.discard(entry.path)
            except OSError:
                continue
