"""The JSON API of docs/api.md through the real app and a real SQLite file: every endpoint and error."""

import base64
import io
import struct
import threading
import zlib

import pytest
from PIL import Image

from imgsmaller import accounts
from imgsmaller.db import connect

from helpers import assert_error, build_app, post_file, shut_down, wait_for_result
from images import encode, image_bytes, photo

INPUTS = ["jpeg", "jpg", "png", "webp", "avif"]
OUTPUTS = ["jpeg", "jpg", "png", "webp", "avif", "original"]
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}


def post_json(client, key, body):
    return client.post("/api/v1/compress", headers={"X-API-Key": key}, json=body)


def compress_and_wait(client, key, data, **fields):
    response = post_file(client, key, data, **fields)
    assert response.status_code == 202, response.get_json()
    return wait_for_result(client, response.get_json()["progress_key"])


def used_today(client, key):
    return client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()["remaining_today"]


# -- authentication -------------------------------------------------------------


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_missing_key_is_401(client):
    assert "API key" in assert_error(client.get("/api/v1/info"), 401)
    assert_error(client.post("/api/v1/compress", data={"file": (io.BytesIO(image_bytes()), "a.png")}), 401)


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_invalid_key_is_401(client):
    assert_error(client.get("/api/v1/info", headers={"X-API-Key": "isk_" + "0" * 64}), 401)
    assert_error(client.get("/api/v1/info?api_key=nonsense"), 401)


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_key_in_query_works(client, user):
    assert client.get(f"/api/v1/info?api_key={user['key']}").status_code == 200


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_header_wins_over_query(client, user, make_user):
    other = make_user()
    assert_error(client.get(f"/api/v1/info?api_key={user['key']}", headers={"X-API-Key": "isk_bad"}), 401)
    response = client.get("/api/v1/info?api_key=isk_bad", headers={"X-API-Key": other["key"]})
    assert response.status_code == 200


# -- /api/v1/info ---------------------------------------------------------------


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_info_reports_capabilities_and_quota(client, user):
    response = client.get("/api/v1/info", headers={"X-API-Key": user["key"]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["endpoint"] == "http://localhost/api/v1/compress"
    assert body["limit"] == 100 and body["remaining_today"] == 100
    assert 0 < body["reset_in_seconds"] <= 86400
    assert body["supported_input"] == ["jpeg", "jpg", "png", "webp", "avif", "heic", "heif"]
    assert body["supported_output"] == OUTPUTS
    assert response.headers["X-RateLimit-Limit"] == "100"
    assert response.headers["X-RateLimit-Remaining"] == "100"
    assert int(response.headers["X-RateLimit-Reset"]) == body["reset_in_seconds"]


def test_info_uses_public_url_and_the_account_limit(tmp_path, make_user):
    app = build_app(tmp_path, PUBLIC_URL="https://img.example.com/")
    try:
        db = connect(app.config["DATABASE"])
        _, key = accounts.create_user(db, "lim@example.org", daily_limit=3)
        db.close()
        body = app.test_client().get("/api/v1/info", headers={"X-API-Key": key}).get_json()
        assert body["endpoint"] == "https://img.example.com/api/v1/compress"
        assert body["limit"] == 3 and body["remaining_today"] == 3
    finally:
        shut_down(app)


# -- /api/v1/compress: success --------------------------------------------------


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_multipart_upload_is_compressed_and_downloadable(client, user):
    original = image_bytes("png", 120, 80)
    response = post_file(client, user["key"], original, filename="holiday photo.png", target_size="auto")
    assert response.status_code == 202
    body = response.get_json()
    assert list(body) == ["queued", "progress_key", "result_url", "download_url_template"]
    assert body["queued"] is True and len(body["progress_key"]) >= 22
    assert body["result_url"] == f"http://localhost/result/{body['progress_key']}"
    assert body["download_url_template"] == "http://localhost/download/{imageId}"
    assert response.headers["X-RateLimit-Remaining"] == "99"

    result = wait_for_result(client, body["progress_key"])
    assert result["status"] == "done", result
    assert result["format"] == "png" and result["original_format"] == "png"
    assert (result["width"], result["height"]) == (120, 80)
    assert result["original_bytes"] == len(original)
    assert result["bytes"] <= len(original)
    assert result["download"].startswith(f"http://localhost/download/{result['image_id']}?token=")
    assert result["expires_at"].endswith("Z")

    download = client.get(result["download"])
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "image/png"
    assert int(download.headers["Content-Length"]) == result["bytes"] == len(download.data)
    assert download.headers["Content-Disposition"] == f"attachment; filename=holiday_photo-{result['image_id']}.png"
    assert Image.open(io.BytesIO(download.data)).size == (120, 80)


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_base64_with_data_url_prefix_is_accepted(client, user):
    data = base64.b64encode(image_bytes("jpeg")).decode()
    response = post_json(client, user["key"], {"file_base64": "data:image/jpeg;base64," + data,
                                                "output": "webp", "target_size": "2 kb"})
    assert response.status_code == 202, response.get_json()
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result["status"] == "done" and result["format"] == "webp"
    assert result["bytes"] <= 2048


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("input_format", INPUTS)
def test_every_input_converts_to_every_output(client, user, input_format, output):
    data = encode(photo(48, 32, alpha=input_format in ("png", "webp", "avif")), input_format)
    result = compress_and_wait(client, user["key"], data, output=output, filename=f"x.{input_format}")
    assert result["status"] == "done", result
    expected = {"jpg": "jpeg", "original": {"jpg": "jpeg"}.get(input_format, input_format)}.get(output, output)
    assert result["format"] == expected
    download = client.get(result["download"])
    assert download.headers["Content-Type"] == MIME[expected]
    assert Image.open(io.BytesIO(download.data)).format.lower() == expected


@pytest.mark.parametrize("target, limit", [("3KB", 3 * 1024), ("5000B", 5000), ("0.01MB", 10485)])
@pytest.mark.parametrize("output", ["jpeg", "webp", "avif", "png"])
def test_target_size_is_never_exceeded(client, user, output, target, limit):
    result = compress_and_wait(client, user["key"], image_bytes("png", 200, 150), output=output, target_size=target)
    assert result["status"] == "done", result
    assert result["bytes"] <= limit
    assert len(client.get(result["download"]).data) == result["bytes"]


# -- /api/v1/compress: errors ----------------------------------------------------


def truncated_jpeg():
    data = image_bytes("jpeg", 200, 150)
    return data[: len(data) // 2]


def bad_crc_png():
    data = bytearray(image_bytes("png", 40, 30))
    data[33 + 8 + 4] ^= 0xFF  # a byte inside the first IDAT chunk's data; its CRC no longer matches
    return bytes(data)


def png_claiming(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, status", [
    (b"", 422),
    (bytes(range(256)) * 40, 415),
    (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", 415),
    (b"GIF89a" + b"\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 30, 415),
    (encode(photo(20, 20), "bmp"), 415),
    (encode(photo(20, 20), "tiff"), 415),
    (truncated_jpeg(), 422),
    (bad_crc_png(), 422),
    (png_claiming(100_000, 100_000), 422),
], ids=["empty", "random", "pdf", "gif", "bmp", "tiff", "truncated-jpeg", "bad-crc-png", "huge-dimensions"])
def test_bad_images_are_refused_before_queueing(client, user, data, status):
    assert_error(post_file(client, user["key"], data), status)
    assert_error(post_json(client, user["key"], {"file_base64": base64.b64encode(data).decode()}), status)
    assert used_today(client, user["key"]) == 100  # 4xx uses no quota


@pytest.mark.parametrize("fields", [
    {"target_size": "abc"}, {"target_size": "20"}, {"target_size": "0.5KB"}, {"target_size": "1023B"},
    {"target_size": "-5KB"}, {"target_size": "1e3KB"}, {"target_size": "KB"}, {"target_size": "1.5B"},
    {"output": "gif"}, {"output": "tiff"}, {"output": "jpeg2000"},
])
def test_bad_fields_are_422(client, user, fields):
    assert_error(post_file(client, user["key"], image_bytes(), **fields), 422)
    body = {"file_base64": base64.b64encode(image_bytes()).decode(), **fields}
    assert_error(post_json(client, user["key"], body), 422)


@pytest.mark.parametrize("value, expected", [("20KB", 20480), ("1.5MB", 1572864), ("500000B", 500000),
                                             ("20 kb", 20480), ("AUTO", None), ("1KB", 1024)])
def test_target_size_forms(value, expected):
    from imgsmaller.params import parse_target_size
    assert parse_target_size(value) == expected


@pytest.mark.parametrize("body", [
    {},
    {"file_base64": base64.b64encode(image_bytes()).decode(), "file_url": "https://example.com/a.png"},
    {"file_base64": "not base64!!"},
    {"file_base64": "QUJD="},
    {"file_base64": 12},
    {"file_url": ""},
    [1, 2],
], ids=["neither", "both", "bad-base64", "bad-padding", "not-a-string", "empty-url", "not-an-object"])
def test_bad_json_bodies_are_422(client, user, body):
    assert_error(post_json(client, user["key"], body), 422)


def test_missing_file_and_unknown_body_types_are_422(client, user):
    headers = {"X-API-Key": user["key"]}
    assert_error(client.post("/api/v1/compress", headers=headers, data={"output": "png"}), 422)
    assert_error(client.post("/api/v1/compress", headers=headers, data=b"{bad json",
                             content_type="application/json"), 422)
    assert_error(client.post("/api/v1/compress", headers=headers, data=image_bytes(), content_type="image/png"), 422)


@pytest.fixture
def small_limit_app(tmp_path):
    app = build_app(tmp_path, UPLOAD_MAX_MB=0.05)  # 51200 bytes
    yield app
    shut_down(app)


def test_oversize_inputs_are_413_for_uploads_and_base64(small_limit_app):
    db = connect(small_limit_app.config["DATABASE"])
    _, key = accounts.create_user(db, "big@example.org")
    db.close()
    client = small_limit_app.test_client()
    big = encode(photo(400, 400), "png")
    assert len(big) > 51200
    assert "too large" in assert_error(post_file(client, key, big), 413)
    assert_error(post_json(client, key, {"file_base64": base64.b64encode(big).decode()}), 413)
    huge = b"\x89PNG" + b"\x00" * 200_000  # over the whole-body limit too
    assert_error(post_file(client, key, huge), 413)
    assert_error(post_json(client, key, {"file_base64": base64.b64encode(huge).decode()}), 413)
    assert client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()["remaining_today"] == 100


def test_file_url_without_allowed_domain_is_403_with_the_documented_message(client, user):
    message = assert_error(post_json(client, user["key"], {"file_url": "https://example.com/a.png"}), 403)
    assert message == "No allowed domain set. Please set your allowed domain in dashboard."


@pytest.mark.parametrize("url", ["https://badexample.com/a.png", "https://example.com.evil.test/a.png",
                                 "http://other.org/a.png"])
def test_file_url_outside_the_allowed_domain_is_403(client, make_user, url):
    user = make_user(allowed_domain="example.com")
    message = assert_error(post_json(client, user["key"], {"file_url": url}), 403)
    assert "No allowed domain set" not in message


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_daily_limit_answers_429_with_retry_after(client, make_user):
    user = make_user(daily_limit=2)
    for _ in range(2):
        assert post_file(client, user["key"], image_bytes()).status_code == 202
    response = post_file(client, user["key"], image_bytes())
    assert "limit" in assert_error(response, 429).lower()
    assert 0 < int(response.headers["Retry-After"]) <= 86400
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()["remaining_today"] == 0


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_quota_is_exact_under_concurrent_requests(app, make_user):
    user = make_user(daily_limit=5)
    data = image_bytes()
    statuses = []
    barrier = threading.Barrier(12)

    def send():
        client = app.test_client()
        barrier.wait()
        statuses.append(post_file(client, user["key"], data).status_code)

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202] * 5 + [429] * 7


# -- /result and /download -------------------------------------------------------


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_unknown_progress_key_is_404(client):
    assert_error(client.get("/result/does-not-exist"), 404)


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_bare_download_needs_the_owners_key(client, user, make_user):
    result = compress_and_wait(client, user["key"], image_bytes())
    url = f"/download/{result['image_id']}"
    assert client.get(url, headers={"X-API-Key": user["key"]}).status_code == 200
    assert client.get(f"{url}?api_key={user['key']}").status_code == 200
    assert_error(client.get(url), 404)
    assert_error(client.get(url, headers={"X-API-Key": make_user()["key"]}), 404)
    assert_error(client.get(f"{url}?token=wrong"), 404)
    assert_error(client.get("/download/999999", headers={"X-API-Key": user["key"]}), 404)


@pytest.mark.engines  # the API on SQLite and on PostgreSQL
def test_expired_results_answer_410_and_their_files_are_gone(app, client, user, db):
    result = compress_and_wait(client, user["key"], image_bytes())
    db.execute("UPDATE jobs SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (result["image_id"],))
    assert_error(client.get(result["download"]), 410)
    assert_error(client.get(f"/download/{result['image_id']}", headers={"X-API-Key": user["key"]}), 410)
    assert_error(client.get(f"/download/{result['image_id']}"), 404)  # strangers still learn nothing
    runner = app.extensions["imgsmaller.jobs"]
    assert app.test_cli_runner().invoke(args=["cleanup"]).exit_code == 0
    import os
    assert not os.path.exists(runner.storage.result_path(result["image_id"]))
    assert not os.path.exists(runner.storage.input_path(result["image_id"]))


def test_unknown_routes_and_methods_answer_json(client):
    assert_error(client.get("/api/v1/nope"), 404)
    assert_error(client.put("/api/v1/compress"), 405)
    assert_error(client.get("/api/v1/compress"), 405)


@pytest.mark.parametrize("method, url, kwargs", [
    ("get", "/download/99999999999999999999999999", {}),
    ("get", "/download/-1", {}),
    ("get", "/download/abc", {}),
    ("get", "/result/" + "x" * 5000, {}),
    ("post", "/api/v1/compress",
     {"data": {"file": (io.BytesIO(image_bytes()), "a.png"), "target_size": "9" * 400 + "MB"}}),
    ("post", "/api/v1/compress", {"json": {"file_base64": "", "target_size": None}}),
    ("post", "/api/v1/compress",
     {"json": {"file_base64": base64.b64encode(image_bytes()).decode(), "output": ["png"]}}),
    ("post", "/api/v1/compress", {"json": {"file_url": {"x": 1}}}),
    ("post", "/api/v1/compress", {"json": "just a string"}),
    ("post", "/api/v1/compress", {"data": {"file": "not a file part"}}),
    ("post", "/api/v1/compress",
     {"data": b"--x\r\nbroken multipart", "content_type": "multipart/form-data; boundary=x"}),
], ids=lambda value: str(value)[:40])
def test_odd_requests_never_answer_500(client, user, method, url, kwargs):
    response = getattr(client, method)(url, headers={"X-API-Key": user["key"]}, **kwargs)
    assert 400 <= response.status_code < 500 or response.status_code == 202, response.data[:200]
    assert response.is_json and "message" in response.get_json() or response.status_code == 202


def test_an_unexpected_error_is_a_generic_json_500_with_the_traceback_only_in_the_log(
        client, user, monkeypatch, caplog):
    import imgsmaller.service

    def broken(value):
        raise RuntimeError("internal detail /srv/secret")

    monkeypatch.setattr(imgsmaller.service, "parse_output", broken)
    response = post_file(client, user["key"], image_bytes())
    assert response.status_code == 500
    assert response.get_json() == {"message": "Internal server error"}
    assert "internal detail" in caplog.text and "Traceback" in caplog.text
