"""Idempotent retries through the real app: the Idempotency-Key header of POST /api/v1/compress.

A retry with the same key and the same request gets the first 202 again, with no new job and
no second charge (checked in the answer's headers and in the database); another request with
the key is a 422; duplicates racing each other give one job. On SQLite and on PostgreSQL.
"""

import base64
import hashlib
import io
import json
import re
import threading
from datetime import timedelta

import pytest

from imgsmaller import accounts, idempotency
from imgsmaller import db as database
from imgsmaller.db import database_of, to_iso, transaction, utcnow

from helpers import (
    assert_error,
    build_app,
    fresh_schema,
    own_connection,
    post_file,
    postgres_url,
    run_in_threads,
    shut_down,
    wait_for_result,
)
from images import image_bytes

pytestmark = pytest.mark.engines  # every test that uses the database runs on SQLite and on PostgreSQL

KEY = "3f1c8a52-9b1e-4d7a-8c55-0e6f2b7d9a41"


def send(client, user, key=KEY, data=None, filename="photo.png", **fields):
    """A multipart compress request with the key (None: without the header)."""
    headers = {"X-API-Key": user["key"]}
    if key is not None:
        headers[idempotency.HEADER] = key
    return client.post("/api/v1/compress", headers=headers,
                       data={"file": (io.BytesIO(data or image_bytes()), filename), **fields})


def send_json(client, user, body, key=KEY):
    return client.post("/api/v1/compress", json=body, headers={"X-API-Key": user["key"], idempotency.HEADER: key})


def curl_multipart(boundary, parts):
    """A multipart body as curl writes one: `parts` are (name, value) or (name, bytes, filename)."""
    chunks = []
    for name, value, *filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename[0]}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += "Content-Type: image/png\r\n" if filename else ""
        chunks.append(head.encode() + b"\r\n" + (value if isinstance(value, bytes) else value.encode()) + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def send_raw(client, user, boundary, parts):
    return client.post("/api/v1/compress", data=curl_multipart(boundary, parts),
                       content_type=f"multipart/form-data; boundary={boundary}",
                       headers={"X-API-Key": user["key"], idempotency.HEADER: KEY})


def count(db, table):
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def used_today(db, user):
    row = db.execute("SELECT sum(count) FROM usage WHERE user_id = ?", (user["id"],)).fetchone()
    return row[0] or 0


def assert_replayed(first, again):
    assert first.status_code == again.status_code == 202, (first.get_json(), again.get_json())
    assert again.get_json() == first.get_json()
    assert idempotency.REPLAYED_HEADER not in first.headers
    assert again.headers[idempotency.REPLAYED_HEADER] == "true"


# -- a retry is answered with the first answer -------------------------------------------


def test_a_retry_with_the_same_key_gets_the_first_202_without_a_new_job_or_a_second_charge(client, db, user):
    first = send(client, user, target_size="20KB")
    again = send(client, user, target_size="20KB")
    assert_replayed(first, again)
    assert first.headers["X-RateLimit-Remaining"] == again.headers["X-RateLimit-Remaining"] == "99"
    assert count(db, "jobs") == 1 and used_today(db, user) == 1
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"] == 99
    assert wait_for_result(client, again.get_json()["progress_key"])["status"] == "done"


def test_curl_retries_match_although_each_has_a_new_boundary_and_the_fields_are_spelled_otherwise(client, db, user):
    data = image_bytes()
    first = send_raw(client, user, "------------------------d74496d66958873e",
                     [("file", data, "photo.png"), ("target_size", "50KB"), ("output", "jpeg")])
    # Another boundary, another field order and file name, the same meaning.
    again = send_raw(client, user, "------------------------5a0c9e1b7f3d2c86",
                     [("output", " JPG "), ("target_size", "50 kb"), ("file", data, "renamed.png")])
    assert_replayed(first, again)
    assert count(db, "jobs") == 1 and used_today(db, user) == 1


def test_a_json_retry_matches_whatever_its_spacing_order_and_base64_line_breaks(client, db, user):
    data = image_bytes()
    encoded = base64.b64encode(data).decode()
    first = send_json(client, user, {"file_base64": encoded, "output": "webp"})
    wrapped = "data:image/png;base64," + "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    body = json.dumps({"output": "WEBP", "file_base64": wrapped}, indent=4, separators=(" , ", " : "))
    again = client.post("/api/v1/compress", data=body, content_type="application/json",
                        headers={"X-API-Key": user["key"], idempotency.HEADER: KEY})
    assert_replayed(first, again)
    # The same bytes uploaded as a file are the same request too.
    assert_replayed(first, send(client, user, data=data, output="webp"))
    assert count(db, "jobs") == 1 and used_today(db, user) == 1


def test_absent_fields_are_the_same_request_as_their_defaults(client, db, user):
    first = send(client, user)
    assert_replayed(first, send(client, user, target_size="auto", output="original"))
    assert count(db, "jobs") == 1


def test_a_retry_of_a_request_that_waited_gets_the_202_of_the_same_job(client, db, user):
    first = send(client, user, wait="5")
    assert first.status_code == 200 and first.get_json()["status"] == "done"  # jobs run inline in tests
    again = send(client, user, wait="5")
    assert again.status_code == 202 and again.headers[idempotency.REPLAYED_HEADER] == "true"
    body = again.get_json()
    assert body["progress_key"] == first.get_json()["progress_key"]
    assert body["result_url"] == first.get_json()["result_url"] and body["queued"] is True
    assert count(db, "jobs") == 1 and used_today(db, user) == 1


def test_a_retry_carries_the_first_answers_warnings(client, user):
    first = send(client, user, colour="red")
    assert first.get_json()["warnings"] == ["Ignored field 'colour'."]
    assert_replayed(first, send(client, user, colour="red"))


def test_a_retry_is_answered_even_after_the_daily_limit_is_reached(client, db, make_user):
    user = make_user(daily_limit=1)
    first = send(client, user)
    over = send(client, user, key="another key", data=image_bytes(seed=1))
    assert_error(over, 429)
    assert count(db, "idempotency_keys") == 1  # the refused request did not keep its key
    again = send(client, user)
    assert_replayed(first, again)
    assert again.headers["X-RateLimit-Remaining"] == "0" and used_today(db, user) == 1


def test_the_compressor_page_takes_the_header_too(client, db, make_user):
    user = make_user(password="correct horse battery")

    def csrf_token(path):
        page = client.get(path).get_data(as_text=True)
        return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)

    client.post("/login", data={"email": user["email"], "password": "correct horse battery",
                                "csrf_token": csrf_token("/login")})
    data = image_bytes()

    def upload():
        return client.post("/app/compress", headers={"X-CSRFToken": csrf_token("/"), idempotency.HEADER: KEY},
                           data={"file": (io.BytesIO(data), "a.png")})

    first, again = upload(), upload()
    assert_replayed(first, again)
    assert count(db, "jobs") == 1 and again.get_json()["remaining_today"] == 99


# -- another request with the key, other accounts -----------------------------------------


@pytest.mark.parametrize("change", [{"data": image_bytes(seed=1)}, {"target_size": "20KB"}, {"output": "png"},
                                    {"filename": "same.png", "wait": "0", "output": "webp"}])
def test_the_same_key_with_a_different_request_is_a_422_that_queues_and_charges_nothing(client, db, user, change):
    first = send(client, user)
    refused = send(client, user, **change)
    assert assert_error(refused, 422) == idempotency.KEY_REUSED
    assert refused.headers["X-RateLimit-Remaining"] == "99"
    assert count(db, "jobs") == 1 and used_today(db, user) == 1
    assert_replayed(first, send(client, user))  # the key still answers for the first request


def test_wait_is_not_part_of_the_request_compared(client, db, user):
    first = send(client, user)
    assert_replayed(first, send(client, user, wait="3"))


def test_keys_belong_to_their_account(client, db, make_user):
    ada, bob = make_user(), make_user()
    first, other = send(client, ada), send(client, bob)
    assert first.status_code == other.status_code == 202
    assert first.get_json()["progress_key"] != other.get_json()["progress_key"]
    assert idempotency.REPLAYED_HEADER not in other.headers
    assert count(db, "jobs") == 2


def test_requests_without_the_header_are_never_deduplicated(client, db, user):
    first, second = send(client, user, key=None), send(client, user, key=None)
    assert first.get_json()["progress_key"] != second.get_json()["progress_key"]
    assert count(db, "jobs") == 2 and count(db, "idempotency_keys") == 0


# -- malformed keys and refused requests ----------------------------------------------------


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "tab\there", "del\x7f"])
def test_a_malformed_key_is_a_422_naming_the_header(client, db, user, key):
    response = send(client, user, key=key)
    assert assert_error(response, 422) == idempotency.INVALID_KEY
    assert "Idempotency-Key" in idempotency.INVALID_KEY
    assert count(db, "jobs") == 0 and used_today(db, user) == 0 and count(db, "idempotency_keys") == 0


@pytest.mark.parametrize("key", ["k", "x" * 255, "order 2026-12-01 #17 (retry ok) ~!@$%^&*"])
def test_any_1_to_255_printable_ascii_characters_are_a_key(client, user, key):
    first = send(client, user, key=key)
    assert_replayed(first, send(client, user, key=key))


def test_the_key_is_stored_only_as_a_hash(client, db, user):
    send(client, user)
    (row,) = db.execute("SELECT * FROM idempotency_keys").fetchall()
    assert KEY not in [str(value) for value in row]
    assert row["key_hash"] == hashlib.sha256(KEY.encode()).hexdigest()


@pytest.mark.parametrize(("data", "status"), [(b"not an image at all", 415), (image_bytes()[:60], 422)])
def test_a_refused_request_does_not_keep_its_key(client, db, user, data, status):
    assert_error(send(client, user, data=data), status)
    assert count(db, "idempotency_keys") == 0
    fixed = send(client, user)  # the corrected request, with the same key: a new job
    assert fixed.status_code == 202 and idempotency.REPLAYED_HEADER not in fixed.headers
    assert count(db, "jobs") == 1 and used_today(db, user) == 1


@pytest.mark.parametrize("field", [{"target_size": "20000"}, {"output": "gif"}, {"wait": "-1"}])
def test_a_bad_field_with_a_key_gets_the_same_error_as_without_even_after_a_good_request(client, db, user, field):
    without = send(client, user, key=None, **field)
    assert assert_error(send(client, user, **field), 422) == assert_error(without, 422)
    assert count(db, "idempotency_keys") == 0
    send(client, user)
    assert assert_error(send(client, user, **field), 422) == assert_error(without, 422)  # not a replay


# -- expiry ---------------------------------------------------------------------------------


def age_keys(db, hours):
    with transaction(db):
        db.execute("UPDATE idempotency_keys SET created_at = ?", (to_iso(utcnow() - timedelta(hours=hours)),))


def test_a_key_older_than_24_hours_is_ignored_even_before_it_is_deleted(client, db, user):
    first = send(client, user)
    age_keys(db, 23)
    assert_replayed(first, send(client, user))
    age_keys(db, 24.01)
    later = send(client, user, data=image_bytes(seed=2))  # a new request may use the old key
    assert later.status_code == 202 and idempotency.REPLAYED_HEADER not in later.headers
    assert later.get_json()["progress_key"] != first.get_json()["progress_key"]
    assert count(db, "jobs") == 2 and used_today(db, user) == 2
    assert_replayed(later, send(client, user, data=image_bytes(seed=2)))  # and now answers for it


def test_maintenance_deletes_the_keys_older_than_24_hours(app, client, db, make_user):
    old, recent = make_user(), make_user()
    send(client, old)
    age_keys(db, 25)
    send(client, recent)
    app.extensions["imgsmaller.jobs"].maintain()
    rows = db.execute("SELECT user_id FROM idempotency_keys").fetchall()
    assert [row["user_id"] for row in rows] == [recent["id"]]


def test_deleting_an_account_deletes_its_keys(app, client, db, user):
    send(client, user)
    with transaction(db):
        db.execute("DELETE FROM users WHERE id = ?", (user["id"],))
    assert count(db, "idempotency_keys") == 0


# -- duplicates at the same moment ------------------------------------------------------------


def test_racing_duplicates_give_one_job_one_charge_and_the_same_answer(app, db, user):
    data, answers = image_bytes(), []
    barrier = threading.Barrier(12, timeout=60)

    def retry():
        client = app.test_client()
        barrier.wait()
        answers.append(send(client, user, data=data))

    run_in_threads(retry, 12, timeout=120)
    assert len(answers) == 12 and {answer.status_code for answer in answers} == {202}
    assert len({answer.get_data() for answer in answers}) == 1
    assert sum(idempotency.REPLAYED_HEADER in answer.headers for answer in answers) == 11
    assert count(db, "jobs") == 1 and used_today(db, user) == 1


def claim_in_thread(target, request):
    """Claim the key on a connection of its own, in a thread; returns (thread, outcome list)."""
    outcome = []

    def claim():
        connection = own_connection(target)
        try:
            with transaction(connection):
                idempotency.claim(connection, request, utcnow())
            outcome.append("claimed")
        except idempotency.KeyTaken:
            outcome.append("taken")
        finally:
            connection.close()

    thread = threading.Thread(target=claim)
    thread.start()
    return thread, outcome


def test_a_duplicate_waits_for_the_first_transaction_then_finds_the_key_taken(app, client, user):
    target = database_of(app.config)
    queued = post_file(client, user["key"], image_bytes()).get_json()
    job_id = wait_for_result(client, queued["progress_key"])["image_id"]
    request = idempotency.IdempotentRequest(user["id"], "ab" * 32, "cd" * 32)
    first = own_connection(target)
    try:
        with transaction(first):
            idempotency.claim(first, request, utcnow())
            thread, outcome = claim_in_thread(target, request)
            thread.join(0.5)
            assert thread.is_alive()  # held on the key (PostgreSQL) or the write lock (SQLite) until the commit
            idempotency.record_job(first, request, job_id, [])
        thread.join(60)
        assert outcome == ["taken"]
        assert idempotency.replay_job(first, request, utcnow())[0]["id"] == job_id
    finally:
        first.close()


def test_a_duplicate_takes_the_key_when_the_first_transaction_rolls_back(app, user):
    target = database_of(app.config)
    request = idempotency.IdempotentRequest(user["id"], "ef" * 32, "01" * 32)
    first = own_connection(target)
    try:
        with pytest.raises(RuntimeError), transaction(first):
            idempotency.claim(first, request, utcnow())
            thread, outcome = claim_in_thread(target, request)
            thread.join(0.5)
            raise RuntimeError("e.g. the storage failed")
        thread.join(60)
        assert outcome == ["claimed"]
    finally:
        first.close()


def test_copy_to_postgres_keeps_the_keys_so_a_retry_after_the_move_is_still_a_replay(tmp_path, engine):
    if engine != "sqlite":
        pytest.skip("copies an SQLite install (the PostgreSQL side is the target)")
    app = build_app(tmp_path)
    try:
        client, cli = app.test_client(), app.test_cli_runner()
        connection = database.connect(database_of(app.config))
        user_id, api_key = accounts.create_user(connection, "ada@example.org")
        connection.close()
        user = {"id": user_id, "key": api_key}
        first = send(client, user)
        with fresh_schema(postgres_url()) as url:
            result = cli.invoke(args=["copy-to-postgres", url])
            assert result.exit_code == 0 and "(and 1 Idempotency-Key(s))" in result.output, result.output
            moved = build_app(tmp_path, DATABASE_URL=url)
            try:
                assert_replayed(first, send(moved.test_client(), user))
            finally:
                shut_down(moved)
    finally:
        shut_down(app)


# -- the table's schema ------------------------------------------------------------------------


def table_shape(connection):
    if database.dialect(connection) is database.SQLITE:
        columns = [tuple(row) for row in connection.execute("PRAGMA table_info(idempotency_keys)")]
        keys = [tuple(row) for row in connection.execute("PRAGMA foreign_key_list(idempotency_keys)")]
        indexes = sorted(row["name"] for row in connection.execute("PRAGMA index_list(idempotency_keys)"))
        return columns, keys, indexes
    columns = connection.execute(
        "SELECT column_name, data_type, is_nullable, collation_name FROM information_schema.columns"
        " WHERE table_name = 'idempotency_keys' AND table_schema = current_schema() ORDER BY ordinal_position"
    ).fetchall()
    indexes = connection.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'idempotency_keys'"
                                 " AND schemaname = current_schema() ORDER BY indexname").fetchall()
    return [tuple(row) for row in columns], [tuple(row) for row in indexes]


def test_the_migration_gives_the_table_of_a_new_database(app):
    target = database_of(app.config)
    connection = own_connection(target)
    try:
        fresh = table_shape(connection)
        assert fresh[0]
        connection.execute("DROP TABLE idempotency_keys")
        if database.dialect(connection) is database.SQLITE:
            connection.execute("PRAGMA user_version = 6")
        else:
            connection.execute("DELETE FROM schema_migrations WHERE version >= 7")  # 7 and any later one
        database.init_db(target)
        assert table_shape(connection) == fresh
        assert database.schema_version(connection) == database.SCHEMA_VERSION
    finally:
        connection.close()


def test_an_idempotency_row_must_name_an_account(app):
    connection = own_connection(database_of(app.config))
    try:
        with pytest.raises(database.IntegrityError):
            with transaction(connection):
                connection.execute("INSERT INTO idempotency_keys (user_id, key_hash, fingerprint, created_at)"
                                   " VALUES (?, ?, ?, ?)", (987654, "a", "b", to_iso(utcnow())))
    finally:
        connection.close()



def test_the_image_of_a_keyed_request_is_decoded_and_read_once(client, db, user, monkeypatch):
    decodes, real_decode = [], base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    data = image_bytes()
    response = send_json(client, user, {"file_base64": base64.b64encode(data).decode()})
    assert response.status_code == 202 and len(decodes) == 1  # the fingerprint's bytes were the job's
    assert db.execute("SELECT original_bytes FROM jobs").fetchone()["original_bytes"] == len(data)


def test_a_keyed_request_with_bad_base64_is_still_refused_with_its_own_words(client, user):
    response = send_json(client, user, {"file_base64": "not base64!"})
    assert response.status_code == 422 and response.get_json()["message"] == "file_base64 is not valid base64."


def test_a_keyed_multipart_upload_is_read_once_and_stored_whole(client, db, user, monkeypatch):
    data, reads = image_bytes(), []
    real = idempotency.uploaded_bytes

    def counting(request, upload, max_bytes):
        had = getattr(request, "_imgsmaller_uploaded", None)
        reads.append(had is None)
        return real(request, upload, max_bytes)

    monkeypatch.setattr(idempotency, "uploaded_bytes", counting)
    response = send(client, user, data=data)
    assert response.status_code == 202
    assert reads == [True, False]  # the fingerprint read the stream; the service used those bytes
    assert db.execute("SELECT original_bytes FROM jobs").fetchone()["original_bytes"] == len(data)
