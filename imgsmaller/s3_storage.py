"""Inputs and results as objects in an S3-compatible bucket (STORAGE_URL=s3://BUCKET/prefix).

The same interface as storage.LocalStorage. Keys come from job ids only:
`<prefix>/inputs/<id>` and `<prefix>/results/<id>`. A PUT is atomic, so no
partial object is ever visible; an input is PUT under its final key inside the
transaction that inserts the job and deleted if that transaction rolls back.
Credentials come from the standard AWS chain (environment, profile, instance
role), never from a setting of ours. Imports boto3, errors, settings and storage.
"""

import logging
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .errors import ServiceUnavailableError
from .settings import SettingsError
from .storage import STORAGE_UNAVAILABLE, StoredFile

log = logging.getLogger(__name__)

PRESIGNED_URL_S = 300  # a download link is signed per response and valid for five minutes
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}

# Checksums only when an operation requires them: boto3 >= 1.36 sends checksum headers by
# default that several S3-compatible servers reject (boto/boto3#4392). Timeouts and at most 3
# attempts bound an outage: a store that accepts connections and never answers costs at most
# 3 x 15 s plus backoff (< 3 s) = 48 s, under nginx's 60 s proxy_read_timeout, so the client
# gets our 503, not a gateway timeout. The read timeout is per socket read, not per object.
CLIENT_CONFIG = Config(
    signature_version="s3v4",
    s3={"addressing_style": "path"},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    connect_timeout=5,
    read_timeout=15,
    retries={"total_max_attempts": 3, "mode": "standard"},
)
# The input's PUT runs inside the database transaction that inserts the job, which holds the
# SQLite write lock (busy timeout 30 s in db.py): at worst 3 + 10 s, a backoff under 1 s, and
# 3 + 10 s again (measured: 22 s against a silent port), so other writers wait but never time out.
COMMIT_CONFIG = CLIENT_CONFIG.merge(Config(connect_timeout=3, read_timeout=10,
                                           retries={"total_max_attempts": 2, "mode": "standard"}))


def parse_storage_url(url):
    """(bucket, prefix) of `s3://BUCKET/optional/prefix`; the prefix has no slash at either end."""
    parts = urlsplit(url)
    return parts.netloc, parts.path.strip("/")


class S3StoredFile(StoredFile):
    """An object's body; a connection lost while reading it is a 503 like any other outage."""

    def read(self, size=-1):
        try:
            return self.file.read(None if size < 0 else size)
        except BotoCoreError as error:
            log.error("S3: the connection was lost while reading an object: %s", error)
            raise ServiceUnavailableError(STORAGE_UNAVAILABLE) from error


class S3Storage:
    """One bucket (and key prefix) through boto3 clients made once per process and shared by its threads."""

    def __init__(self, client, bucket, prefix="", *, redirects=False, commit_client=None):
        self.client = client
        self.commit_client = commit_client or client  # the input's PUT inside the transaction (COMMIT_CONFIG)
        self.bucket = bucket
        self.prefix = prefix
        self.redirects = redirects  # STORAGE_DOWNLOAD=redirect: downloads get a presigned URL

    @classmethod
    def from_config(cls, config):
        """Build the client and check the bucket now: a bad setting stops start-up."""
        bucket, prefix = parse_storage_url(config["STORAGE_URL"])
        session = boto3.session.Session()
        options = {"endpoint_url": config.get("S3_ENDPOINT_URL") or None,
                   "region_name": config.get("S3_REGION") or None}
        storage = cls(session.client("s3", config=CLIENT_CONFIG, **options), bucket, prefix,
                      redirects=config.get("STORAGE_DOWNLOAD") == "redirect",
                      commit_client=session.client("s3", config=COMMIT_CONFIG, **options))
        storage.check_start_up(config.get("S3_ENDPOINT_URL") or "AWS")
        return storage

    def key(self, kind, job_id):
        name = f"{kind}/{int(job_id)}"
        return f"{self.prefix}/{name}" if self.prefix else name

    # -- start-up and readiness ------------------------------------------------------

    def check_start_up(self, endpoint):
        """SettingsError unless the bucket exists, the credentials are accepted and a write succeeds."""
        where = f"STORAGE_URL bucket {self.bucket!r} at {endpoint}"
        probe = self.key("tmp", 0) + ".start-up-check"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise SettingsError(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE).") from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise SettingsError(f"{where}: the bucket does not exist.") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise SettingsError(f"{where}: access denied; check the AWS credentials and the "
                                    "bucket's policy (objects must be readable, writable and deletable).") from None
            raise SettingsError(f"{where}: the store answered {code or 'an error'}.") from None
        except BotoCoreError as error:
            raise SettingsError(f"{where}: cannot reach the endpoint ({error}); check S3_ENDPOINT_URL "
                                "and S3_REGION.") from None

    def check_ready(self):
        """One HEAD of the bucket: reachable, credentials accepted, bucket present.

        Not a write: /readyz may be called every second by every node, and each PUT is billed."""
        self._call("check the bucket", self.client.head_bucket, Bucket=self.bucket)

    # -- inputs ----------------------------------------------------------------------

    def stage_input(self, data):
        return data  # already in memory (at most UPLOAD_MAX_MB): nothing to write before the id is known

    def commit_input(self, staged, job_id):
        self._call("store an input", self.commit_client.put_object, Bucket=self.bucket,
                   Key=self.key("inputs", job_id), Body=staged)

    def discard_staged(self, staged):
        pass

    def delete_input(self, job_id):
        """Undo commit_input when the transaction that inserted the job rolled back (the commit budget too)."""
        self._call("delete an input", self.commit_client.delete_object, Bucket=self.bucket,
                   Key=self.key("inputs", job_id))

    def open_input(self, job_id):
        return self._open(self.key("inputs", job_id))

    def read_input(self, job_id):
        with self.open_input(job_id) as stored:
            return stored.read()

    # -- results ---------------------------------------------------------------------

    def save_result(self, job_id, data):
        self._put(self.key("results", job_id), data)

    def open_result(self, job_id):
        return self._open(self.key("results", job_id))

    def has_result(self, job_id):
        try:
            self._call("look up a result", self.client.head_object, Bucket=self.bucket,
                       Key=self.key("results", job_id))
        except FileNotFoundError:
            return False
        return True

    def delete_result(self, job_id):
        self._delete(self.key("results", job_id))

    def result_url(self, job_id, download_name, content_type, expires_in=PRESIGNED_URL_S):
        """A presigned GET of the result that the browser saves as `download_name`; signed locally, no request."""
        return self.client.generate_presigned_url("get_object", ExpiresIn=expires_in, Params={
            "Bucket": self.bucket, "Key": self.key("results", job_id),
            "ResponseContentDisposition": f'attachment; filename="{download_name}"',
            "ResponseContentType": content_type,
        })

    # -- expiry ----------------------------------------------------------------------

    def delete_job_files(self, job_id):
        """Delete a job's objects; False when a delete failed (the job stays listed for the next expiry)."""
        try:
            self._delete(self.key("inputs", job_id))
            self._delete(self.key("results", job_id))
        except ServiceUnavailableError:
            return False
        return True

    def remove_stale_temp_files(self, now=None):
        pass  # nothing is ever written under a temporary key

    # -- one request -----------------------------------------------------------------

    def _put(self, key, data):
        self._call("store an object", self.client.put_object, Bucket=self.bucket, Key=key, Body=data)

    def _delete(self, key):
        self._call("delete an object", self.client.delete_object, Bucket=self.bucket, Key=key)

    def _open(self, key):
        response = self._call("read an object", self.client.get_object, Bucket=self.bucket, Key=key)
        return S3StoredFile(response["Body"], response["ContentLength"])

    def _call(self, what, method, **params):
        """method(**params); a missing object is FileNotFoundError, any other failure a logged 503."""
        try:
            return method(**params)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                raise FileNotFoundError(params.get("Key")) from None
            log.error("S3: cannot %s (%s in bucket %s): %s", what, params.get("Key", "-"), self.bucket, error)
            raise ServiceUnavailableError(STORAGE_UNAVAILABLE) from error
        except BotoCoreError as error:
            log.error("S3: cannot %s (%s in bucket %s): %s", what, params.get("Key", "-"), self.bucket, error)
            raise ServiceUnavailableError(STORAGE_UNAVAILABLE) from error
