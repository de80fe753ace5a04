"""Issue 9, "smaller or say why": through the real app, on real photos (tests/data/photos/).

No JPEG, WebP, AVIF or `original` result is larger than its upload, in auto or at a target
above the upload's size; a larger PNG, a downscale and a score below auto's threshold each
come with a warning. Also the answers around it: ignored request fields (202 warnings),
both image sources, and 413s that name the limit.
"""

import base64
import io
import pathlib
import sqlite3

import pytest
from PIL import Image

from imgsmaller import accounts, engine
from imgsmaller import db as database
from imgsmaller.engine import notes
from imgsmaller.errors import PayloadTooLargeError

from helpers import build_app, shut_down

PHOTOS = pathlib.Path(__file__).parent / "data" / "photos"
UPLOADS = sorted(p.name for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
NEVER_LARGER = ("jpeg", "webp", "avif", "original")
ABOVE_ANY_UPLOAD = "5MB"


def post_file(client, key, data, filename="photo.jpg", **fields):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data), filename), **fields})


def compress(client, key, data, **fields):
    response = post_file(client, key, data, **fields)
    assert response.status_code == 202, response.get_json()
    result = client.get(f"/result/{response.get_json()['progress_key']}").get_json()
    assert result["status"] == "done", result
    return result


def message(response, status):
    assert response.status_code == status, (response.status_code, response.data[:300])
    return response.get_json()["message"]


def test_the_photos_are_small_real_and_of_every_kind():
    assert set(UPLOADS) == {"landscape.jpg", "night.jpg", "portrait.jpg", "screenshot.png", "texture.jpg"}
    for name in UPLOADS:
        assert (PHOTOS / name).stat().st_size <= 150 * 1024, name


@pytest.mark.parametrize("name", UPLOADS)
def test_no_lossy_or_original_result_is_larger_than_the_upload_and_larger_pngs_say_why(client, user, name):
    data = (PHOTOS / name).read_bytes()
    for output in (*NEVER_LARGER, "png"):
        for target in ("auto", ABOVE_ANY_UPLOAD):
            result = compress(client, user["key"], data, filename=name, output=output, target_size=target)
            assert result["original_bytes"] == len(data)
            assert isinstance(result["warnings"], list)
            job = f"{name} -> {output} {target}: {result['bytes']} bytes, {result['warnings']}"
            if output in NEVER_LARGER:
                assert result["bytes"] <= len(data), job
            if result["bytes"] > len(data):
                assert any("larger" in w for w in result["warnings"]), job
            if (result["width"], result["height"]) != (result["original_width"], result["original_height"]):
                assert any(w.startswith("Resized from") for w in result["warnings"]), job
            if target == "auto" and result["quality_score"] < 80:
                assert any("Quality score" in w for w in result["warnings"]), job


@pytest.mark.parametrize("name", ["portrait.jpg", "screenshot.png"])
def test_a_target_above_the_upload_in_its_own_format_is_the_upload_without_metadata(client, user, name):
    image = Image.open(PHOTOS / name)
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    buf = io.BytesIO()
    image.save(buf, image.format, exif=exif.tobytes(), **({"quality": "keep"} if image.format == "JPEG" else {}))
    data = buf.getvalue()
    result = compress(client, user["key"], data, filename=name, output="original", target_size=ABOVE_ANY_UPLOAD)
    assert result["bytes"] < len(data) and result["quality_score"] == 100.0 and result["warnings"] == []
    download = client.get(result["download"]).data
    assert b"CameraMaker" not in download
    # The same pixels: no re-encode at a high quality that is larger than the upload.
    assert Image.open(io.BytesIO(download)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_png_of_a_jpeg_photo_is_larger_and_the_warning_says_how_much_and_what_to_use(client, user):
    data = (PHOTOS / "night.jpg").read_bytes()
    result = compress(client, user["key"], data, output="png", target_size="auto")
    assert result["bytes"] > len(data)
    ratio = f"{result['bytes'] / len(data):.1f}×"
    assert any(ratio in w and "JPEG upload" in w and "WebP or AVIF" in w for w in result["warnings"]), result


def test_auto_in_another_lossy_format_keeps_to_the_upload_and_warns_of_the_lower_score(client, user):
    # The noisy night photo: WebP needs more bytes than its JPEG to score 80.
    data = (PHOTOS / "night.jpg").read_bytes()
    result = compress(client, user["key"], data, output="webp", target_size="auto")
    assert result["bytes"] <= len(data)
    assert (result["width"], result["height"]) == (result["original_width"], result["original_height"])
    assert result["quality_score"] < 80
    assert result["warnings"] == [
        f"Quality score {result['quality_score']:.1f}: no WebP that scores 80 (visually lossless) fits in "
        f"the upload's {notes.human_size(len(data))}, so this is the best that does."]


def test_a_downscaled_result_says_from_what_to_what_and_why(client, user):
    data = (PHOTOS / "landscape.jpg").read_bytes()
    result = compress(client, user["key"], data, output="jpeg", target_size="3KB")
    assert result["width"] < result["original_width"]
    assert result["warnings"] == [f"Resized from 576×384 to {result['width']}×{result['height']} to fit 3 KB."]


def test_a_result_without_anything_to_say_has_an_empty_warnings_list(client, user):
    result = compress(client, user["key"], (PHOTOS / "portrait.jpg").read_bytes(), output="avif")
    assert result["warnings"] == [] and result["bytes"] < result["original_bytes"]


# -- the 202 answer: ignored fields ------------------------------------------------


def test_unknown_fields_are_ignored_with_a_warning_and_a_suggestion(client, user):
    data = (PHOTOS / "portrait.jpg").read_bytes()
    response = post_file(client, user["key"], data, target="50KB", colour="red")
    assert response.status_code == 202
    assert response.get_json()["warnings"] == ["Ignored field 'target' — did you mean 'target_size'?",
                                               "Ignored field 'colour'."]
    body = {"file_base64": base64.b64encode(data).decode(), "outptu": "webp", "file": "x"}
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]}, json=body)
    assert response.status_code == 202
    assert response.get_json()["warnings"] == [
        "Ignored field 'outptu' — did you mean 'output'?",
        "Ignored field 'file': a JSON body sends the image as 'file_base64' or 'file_url'."]


def test_a_second_file_part_is_ignored_with_a_warning(client, user):
    first, second = (PHOTOS / "portrait.jpg").read_bytes(), (PHOTOS / "night.jpg").read_bytes()
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                           data={"file": [(io.BytesIO(first), "a.jpg"), (io.BytesIO(second), "b.jpg")]})
    assert response.status_code == 202
    assert response.get_json()["warnings"] == ["Ignored a second 'file' part: one request compresses one image, "
                                               "the first."]
    result = client.get(f"/result/{response.get_json()['progress_key']}").get_json()
    assert result["original_bytes"] == len(first)


def test_a_clean_request_keeps_the_contracts_four_fields(client, user):
    response = post_file(client, user["key"], (PHOTOS / "portrait.jpg").read_bytes(), target_size="auto")
    assert list(response.get_json()) == ["queued", "progress_key", "result_url", "download_url_template"]


def test_both_image_sources_are_refused(client, user):
    body = {"file_base64": base64.b64encode((PHOTOS / "portrait.jpg").read_bytes()).decode(),
            "file_url": "https://example.com/a.jpg"}
    response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]}, json=body)
    assert message(response, 422) == "Send only one of file_base64 or file_url."


# -- 413 names the limit -------------------------------------------------------------


def test_every_413_says_the_limit(tmp_path):
    # Bodies stay under Werkzeug's 500 KB in-memory spooling (a larger refused upload
    # leaves a temporary file for the garbage collector, a ResourceWarning here).
    app = build_app(tmp_path, UPLOAD_MAX_MB=0.05)
    try:
        connection = database.connect(app.config["DATABASE"])
        try:
            _, key = accounts.create_user(connection, "big@example.org")
        finally:
            connection.close()
        client = app.test_client()
        big = b"\xff\xd8\xff" + b"\0" * 60000
        expected = "File too large: the limit is 0.05 MB."
        assert message(post_file(client, key, big), 413) == expected
        body = {"file_base64": base64.b64encode(big).decode()}
        assert message(client.post("/api/v1/compress", headers={"X-API-Key": key}, json=body), 413) == expected
        # A body over MAX_CONTENT_LENGTH is refused by Werkzeug before it is parsed.
        huge = b"\0" * (app.config["MAX_CONTENT_LENGTH"] + 1)
        assert message(post_file(client, key, huge), 413) == expected
    finally:
        shut_down(app)


def test_the_fetchers_413_names_the_limit_in_the_same_words():
    assert PayloadTooLargeError.for_limit(10 * 1024 * 1024).message == "File too large: the limit is 10 MB."
    assert PayloadTooLargeError.for_limit(int(2.5 * 1024 * 1024)).message == "File too large: the limit is 2.5 MB."
    assert PayloadTooLargeError.for_limit(1000).message == "File too large: the limit is 1000 bytes."


# -- storage of the warnings -------------------------------------------------------------


def test_a_version_2_database_gains_the_warnings_column(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    database.init_db(path)
    connection = sqlite3.connect(path)
    connection.execute("ALTER TABLE jobs DROP COLUMN warnings")
    connection.execute("PRAGMA user_version = 2")
    connection.commit()
    connection.close()
    database.init_db(path)
    connection = sqlite3.connect(path)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
        assert "warnings" in columns
        assert connection.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION
    finally:
        connection.close()


def test_the_engine_result_carries_the_warnings():
    result = engine.compress((PHOTOS / "texture.jpg").read_bytes(), output="png", max_pixels=10**8)
    assert len(result.data) > result.original_bytes and result.warnings
