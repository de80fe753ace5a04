"""S3-compatible storage on a real S3 server (Swift + s3api from scripts/swift-s3.sh), and its settings.

Tests marked `needs_s3` read IMGSMALLER_TEST_S3_ENDPOINT_URL and IMGSMALLER_TEST_S3_BUCKET
(and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and skip with the reason shown without
them. Each test works under its own random key prefix in the bucket. Outages are real: a
loopback TCP relay stands between the app and the server and is cut mid-test.
"""

import io
import os
import secrets
import socket
import threading
import time
from contextlib import closing
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError, EndpointConnectionError

from imgsmaller import accounts, job_store, maintenance
from imgsmaller.db import connect, utcnow
from imgsmaller.errors import ServiceUnavailableError
from imgsmaller.s3_storage import CLIENT_CONFIG, S3Storage
from imgsmaller.settings import SettingsError, load_settings

from helpers import build_app, shut_down, wait_for_result
from images import image_bytes

ENDPOINT = os.environ.get("IMGSMALLER_TEST_S3_ENDPOINT_URL")
BUCKET = os.environ.get("IMGSMALLER_TEST_S3_BUCKET")
REGION = os.environ.get("IMGSMALLER_TEST_S3_REGION") or "us-east-1"
# Never ask a cloud's instance-metadata address for credentials (it is not on loopback).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
needs_s3 = pytest.mark.skipif(
    not (ENDPOINT and BUCKET),
    reason="no S3 server: run `eval \"$(scripts/swift-s3.sh start)\"` to set IMGSMALLER_TEST_S3_*")


# -- helpers -------------------------------------------------------------------------


class Relay:
    """A loopback TCP relay to the S3 server: `cut()` refuses and drops every connection;
    with `upload_limit`, each connection is closed after that many bytes towards the server."""

    def __init__(self, target, upload_limit=None):
        self.target = target
        self.upload_limit = upload_limit
        self.holding = False  # hold(): connections are accepted and read, never answered
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.holding:
                self.sockets.append(client)
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.upload_limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, source, target, limit):
        sent = 0
        try:
            while chunk := source.recv(65536):
                if limit is not None and sent + len(chunk) >= limit:
                    target.sendall(chunk[: limit - sent])
                    break
                target.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        for sock in (source, target):
            with closing(sock):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _swallow(self, client):
        try:
            while client.recv(65536):
                pass
        except OSError:
            pass

    def hold(self):
        """From now on the store blackholes: new connections hang, open ones are dropped."""
        self.holding = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def server_address():
    parts = urlsplit(ENDPOINT)
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def s3():
    """A boto3 client on the test server, talking to it directly; the test bucket exists."""
    client = boto3.session.Session().client("s3", endpoint_url=ENDPOINT, region_name=REGION, config=CLIENT_CONFIG)
    try:
        client.create_bucket(Bucket=BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return client


@pytest.fixture
def prefix(s3):
    """A fresh key prefix for one test; its objects are removed after."""
    name = f"test-{secrets.token_hex(6)}"
    yield name
    for key in keys_under(s3, name):
        s3.delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture
def make_s3_app(tmp_path, s3, prefix):
    """make_s3_app(**settings) -> an app storing in s3://BUCKET/<prefix> (inline jobs); shut down after."""
    apps = []

    def make(**overrides):
        settings = {"STORAGE_URL": f"s3://{BUCKET}/{prefix}", "S3_ENDPOINT_URL": ENDPOINT, "S3_REGION": REGION,
                    **overrides}
        apps.append(build_app(tmp_path / f"app{len(apps)}", **settings))
        return apps[-1]

    yield make
    for app in apps:
        shut_down(app)


def new_user(app):
    with closing(connect(app.config["DATABASE"])) as db:
        _, key = accounts.create_user(db, f"{secrets.token_hex(4)}@example.org")
    return key


def compress(client, key, data=None):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data or image_bytes()), "holiday.png"), "target_size": "auto"})


def compress_and_wait(client, key):
    response = compress(client, key)
    assert response.status_code == 202, response.get_json()
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result["status"] == "done", result
    return result


def object_bytes(s3, key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def object_exists(s3, key):
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
    except ClientError as error:
        assert error.response["Error"]["Code"] in ("404", "NoSuchKey")
        return False
    return True


def keys_under(s3, prefix):
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", []))


def expire(app, job_id):
    with closing(connect(app.config["DATABASE"])) as db:
        db.execute("UPDATE jobs SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (job_id,))


def job_row(app, job_id):
    with closing(connect(app.config["DATABASE"])) as db:
        return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


# -- settings (no server needed) ---------------------------------------------------------


@pytest.mark.parametrize("url, words", [
    ("s3://", "names no bucket"),
    ("s3:///only/a/prefix", "names no bucket"),
    ("https://bucket.example.com", "s3://BUCKET"),
    ("s3://Not_A_Bucket/x", "not a valid S3 bucket name"),
    ("s3://bucket/a/../b", "must not contain"),
])
def test_a_storage_url_without_a_valid_bucket_stops_start_up(tmp_path, url, words):
    with pytest.raises(SettingsError, match="STORAGE_URL") as raised:
        load_settings(str(tmp_path), {"STORAGE_URL": url}, {})
    assert words in str(raised.value)


def test_storage_url_keeps_bucket_and_prefix_without_stray_slashes(tmp_path):
    values = load_settings(str(tmp_path), {"STORAGE_URL": "s3://my-bucket//img/prod/"}, {})
    assert values["STORAGE_URL"] == "s3://my-bucket/img/prod"
    assert load_settings(str(tmp_path), {}, {})["STORAGE_URL"] is None  # the folder stays the default


def test_redirect_downloads_need_a_bucket(tmp_path):
    with pytest.raises(SettingsError, match="STORAGE_DOWNLOAD=redirect needs an s3:// STORAGE_URL"):
        load_settings(str(tmp_path), {"STORAGE_DOWNLOAD": "redirect"}, {})
    with pytest.raises(SettingsError, match="STORAGE_DOWNLOAD"):
        load_settings(str(tmp_path), {"STORAGE_DOWNLOAD": "presigned"}, {})


def test_a_local_file_that_cannot_be_deleted_is_retried_at_the_next_expiry(app, client, user, db, monkeypatch):
    result = compress_and_wait(client, user["key"])
    expire(app, result["image_id"])
    storage = app.extensions["imgsmaller.jobs"].storage
    real_remove = os.remove

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "remove", refuse)
    assert maintenance.expire_results(db, storage, utcnow()) == 0
    assert job_row(app, result["image_id"])["files_deleted"] == 0 and storage.has_result(result["image_id"])
    monkeypatch.setattr(os, "remove", real_remove)
    assert maintenance.expire_results(db, storage, utcnow()) == 1
    assert job_row(app, result["image_id"])["files_deleted"] == 1 and not storage.has_result(result["image_id"])


# -- the API end to end on S3 ---------------------------------------------------------------


@needs_s3
def test_compress_result_and_streamed_download_on_s3(make_s3_app, s3, prefix):
    app = make_s3_app()
    client, key = app.test_client(), new_user(app)
    upload = image_bytes()
    result = compress_and_wait(client, key)
    job_id = result["image_id"]
    assert keys_under(s3, prefix) == [f"{prefix}/inputs/{job_id}", f"{prefix}/results/{job_id}"]
    assert object_bytes(s3, f"{prefix}/inputs/{job_id}") == upload
    stored = object_bytes(s3, f"{prefix}/results/{job_id}")
    assert len(stored) == result["bytes"]

    response = client.get(result["download"])
    assert response.status_code == 200 and response.data == stored
    assert response.mimetype == "image/png" and response.content_length == len(stored)
    assert response.headers["Content-Disposition"] == f"attachment; filename=holiday-{job_id}.png"
    by_key = client.get(f"/download/{job_id}", headers={"X-API-Key": key})
    assert by_key.status_code == 200 and by_key.data == stored
    assert client.get(f"/download/{job_id}", headers={"X-API-Key": new_user(app)}).status_code == 404
    assert client.get(f"/download/{job_id}?token=wrong").status_code == 404
    assert client.get("/readyz").get_json()["checks"]["storage"] == "ok"


@needs_s3
def test_a_real_server_streams_a_large_object_from_s3_with_its_length(make_s3_app, s3, prefix):
    import waitress

    app = make_s3_app()
    client, key = app.test_client(), new_user(app)
    result = compress_and_wait(client, key)
    big = os.urandom(3 * 1024 * 1024)  # stands in for a result: several reads through the object's stream
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/results/{result['image_id']}", Body=big)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}" + urlsplit(result["download"])._replace(
            scheme="", netloc="").geturl()
        response = requests.get(url, timeout=30)
        assert response.status_code == 200 and response.content == big
        assert response.headers["Content-Length"] == str(len(big))
    finally:
        server.close()
        thread.join(10)


@needs_s3
def test_redirect_downloads_get_a_presigned_url_that_works_and_refuses_tampering(make_s3_app, s3, prefix):
    app = make_s3_app(STORAGE_DOWNLOAD="redirect")
    client, key = app.test_client(), new_user(app)
    result = compress_and_wait(client, key)
    job_id = result["image_id"]
    stored = object_bytes(s3, f"{prefix}/results/{job_id}")

    response = client.get(result["download"])
    assert response.status_code == 302 and response.headers["Cache-Control"] == "no-store"
    location = response.headers["Location"]
    assert location.startswith(f"{ENDPOINT}/{BUCKET}/{prefix}/results/{job_id}?")  # path-style
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content == stored
    assert fetched.headers["Content-Type"] == "image/png"
    assert fetched.headers["Content-Disposition"] == f'attachment; filename="holiday-{job_id}.png"'

    signature = urlsplit(location).query.split("X-Amz-Signature=")[1][:64]
    tampered = location.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert requests.get(tampered, timeout=10).status_code == 403
    assert client.get(f"/download/{job_id}", headers={"X-API-Key": key}).status_code == 302  # the owner's key too

    # The contract's rules are checked before any redirect: strangers 404, expired 410.
    assert client.get(f"/download/{job_id}?token=wrong").status_code == 404
    assert client.get(f"/download/{job_id}", headers={"X-API-Key": new_user(app)}).status_code == 404
    expire(app, job_id)
    gone = client.get(result["download"])
    assert gone.status_code == 410 and "Location" not in gone.headers


@needs_s3
def test_an_expired_presigned_url_is_refused(make_s3_app):
    app = make_s3_app(STORAGE_DOWNLOAD="redirect")
    client = app.test_client()
    result = compress_and_wait(client, new_user(app))
    storage = app.extensions["imgsmaller.jobs"].storage
    url = storage.result_url(result["image_id"], "x.png", "image/png", expires_in=1)
    assert requests.get(url, timeout=10).status_code == 200
    time.sleep(2.5)  # X-Amz-Expires=1 against the server's clock (the same machine's)
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 403 and b"expired" in expired.content.lower()


# -- expiry ---------------------------------------------------------------------------------


@needs_s3
def test_expiry_deletes_the_objects_and_downloads_answer_410(make_s3_app, s3, prefix):
    app = make_s3_app()
    client, key = app.test_client(), new_user(app)
    old, new = compress_and_wait(client, key), compress_and_wait(client, key)
    expire(app, old["image_id"])
    outcome = app.test_cli_runner().invoke(args=["cleanup"])
    assert outcome.exit_code == 0 and "1 expired job" in outcome.output
    assert keys_under(s3, prefix) == [f"{prefix}/inputs/{new['image_id']}", f"{prefix}/results/{new['image_id']}"]
    assert job_row(app, old["image_id"])["files_deleted"] == 1
    assert client.get(old["download"]).status_code == 410


@needs_s3
def test_a_failed_delete_keeps_the_job_listed_and_the_next_expiry_deletes_it(make_s3_app, s3, prefix, monkeypatch):
    app = make_s3_app()
    client = app.test_client()
    job_id = compress_and_wait(client, new_user(app))["image_id"]
    expire(app, job_id)
    storage = app.extensions["imgsmaller.jobs"].storage
    real_delete, calls = storage.client.delete_object, []

    def fail_once(**params):
        calls.append(params["Key"])
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url=ENDPOINT)
        return real_delete(**params)

    monkeypatch.setattr(storage.client, "delete_object", fail_once)
    with closing(connect(app.config["DATABASE"])) as db:
        assert maintenance.expire_results(db, storage, utcnow()) == 0
        assert job_row(app, job_id)["files_deleted"] == 0
        assert object_exists(s3, f"{prefix}/results/{job_id}")  # still there, still tracked
        assert job_store.expired_job_ids(db, utcnow()) == [job_id]
        assert maintenance.expire_results(db, storage, utcnow()) == 1
    assert job_row(app, job_id)["files_deleted"] == 1
    assert keys_under(s3, prefix) == []


# -- never a partial or orphan object -----------------------------------------------------------


@needs_s3
def test_a_rolled_back_job_leaves_no_input_object_and_no_charge(make_s3_app, s3, prefix, monkeypatch):
    app = make_s3_app()
    client, key = app.test_client(), new_user(app)
    storage = app.extensions["imgsmaller.jobs"].storage
    real_commit = storage.commit_input

    def commit_then_fail(staged, job_id):
        real_commit(staged, job_id)
        assert object_exists(s3, f"{prefix}/inputs/{job_id}")  # really written inside the transaction
        raise RuntimeError("the database failed after the PUT")

    monkeypatch.setattr(storage, "commit_input", commit_then_fail)
    assert compress(client, key).status_code == 500
    assert keys_under(s3, prefix) == []
    with closing(connect(app.config["DATABASE"])) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()["remaining_today"] == 100


@needs_s3
def test_an_upload_cut_off_midway_leaves_no_object(s3, prefix):
    relay = Relay(server_address(), upload_limit=64 * 1024)
    try:
        client = boto3.session.Session().client("s3", endpoint_url=relay.url, region_name=REGION,
                                                config=CLIENT_CONFIG)
        storage = S3Storage(client, BUCKET, prefix)
        with pytest.raises(ServiceUnavailableError):
            storage.save_result(7, os.urandom(1024 * 1024))
    finally:
        relay.cut()
    assert not object_exists(s3, f"{prefix}/results/7")


# -- bad configuration and outages ----------------------------------------------------------------


@needs_s3
@pytest.mark.parametrize("settings, environment, words", [
    ({"STORAGE_URL": f"s3://{BUCKET}-missing-{secrets.token_hex(3)}"} if BUCKET else {}, {}, "does not exist"),
    ({}, {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "access denied"),
    ({"S3_ENDPOINT_URL": "http://127.0.0.1:9"}, {}, "cannot reach the endpoint"),
    ({}, {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}, "no AWS credentials"),
])
def test_bad_storage_configuration_stops_start_up(make_s3_app, monkeypatch, settings, environment, words):
    for name, value in environment.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="STORAGE_URL bucket") as raised:
        make_s3_app(**settings)
    assert words in str(raised.value)
    assert "wrong-secret" not in str(raised.value)


@needs_s3
def test_an_s3_outage_at_run_time_answers_503_and_fails_jobs_in_flight_retryably(make_s3_app, prefix, monkeypatch):
    relay = Relay(server_address())
    try:
        app = make_s3_app(S3_ENDPOINT_URL=relay.url)
        client, key = app.test_client(), new_user(app)
        done = compress_and_wait(client, key)
        runner = app.extensions["imgsmaller.jobs"]
        monkeypatch.setattr(runner, "submit", lambda job_id: None)  # queued now, run after the outage starts
        in_flight = compress(client, key).get_json()
        relay.cut()

        started = time.monotonic()
        refused = compress(client, key)
        assert refused.status_code == 503 and "storage" in refused.get_json()["message"].lower()
        assert time.monotonic() - started < 30  # bounded retries and timeouts, never a hang
        download = client.get(done["download"])
        assert download.status_code == 503 and download.is_json
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["storage"] == "failed"
        assert client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()["remaining_today"] == 98

        with closing(connect(app.config["DATABASE"])) as db:
            job_id = job_store.get_job_by_progress_key(db, in_flight["progress_key"])["id"]
        runner.run(job_id)
        result = client.get(f"/result/{in_flight['progress_key']}").get_json()
        assert result["status"] == "failed" and "try again" in result["message"].lower()
    finally:
        relay.cut()


@needs_s3
@pytest.mark.slow
def test_a_store_that_stops_answering_gives_503_without_locking_out_other_writers(make_s3_app):
    # The input's PUT runs inside the transaction holding SQLite's write lock: its time budget
    # (s3_storage.COMMIT_CONFIG, at most ~27 s) stays under the 30 s busy timeout of other writers.
    relay = Relay(server_address())
    try:
        app = make_s3_app(S3_ENDPOINT_URL=relay.url)
        client, key = app.test_client(), new_user(app)
        relay.hold()
        answers = []
        upload = threading.Thread(target=lambda: answers.append(compress(client, key)))
        upload.start()
        time.sleep(1)  # the upload now holds the write lock, waiting on the store
        with closing(connect(app.config["DATABASE"])) as db:
            accounts.create_user(db, "meanwhile@example.org")  # waits for the lock, then succeeds
        upload.join(60)
        assert answers and answers[0].status_code == 503 and answers[0].is_json
    finally:
        relay.cut()
