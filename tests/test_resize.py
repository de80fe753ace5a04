"""max_width, max_height and fit (issue 13): the engine's resize, and the fields through the real app."""

import base64
import io
import json
import re

import hypothesis
import pytest
from hypothesis import strategies as st
from PIL import Image

from imgsmaller import engine
from imgsmaller.engine.resize import Resize
from imgsmaller.errors import InvalidRequestError

from helpers import assert_error, post_file, wait_for_result
from images import encode, image_bytes, photo

pytestmark = pytest.mark.engines


def compress(data, **options):
    return engine.compress(data, max_pixels=10**8, **options)


def size_of(data):
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- the engine -----------------------------------------------------------------------


@pytest.mark.parametrize(("box", "expected"), [
    (Resize(max_width=200), (200, 150)),
    (Resize(max_height=100), (133, 100)),
    (Resize(100, 100), (100, 75)),
    (Resize(1000, 1000), (400, 300)),                 # never up
    (Resize(100, 100, "cover"), (100, 100)),
    (Resize(300, 100, "cover"), (300, 100)),
    (Resize(800, 800, "cover"), (300, 300)),          # smaller than the box: the box's shape, no upscale
])
def test_the_picture_fits_the_box_keeping_its_aspect_ratio_and_is_never_scaled_up(box, expected):
    result = compress(image_bytes("jpeg", 400, 300), output="webp", resize=box)
    assert (result.width, result.height) == expected == size_of(result.data)
    assert not [w for w in result.warnings if w.startswith("Resized")]  # asked for: no warning


def test_cover_crops_the_middle():
    image = Image.new("RGB", (300, 100), "red")
    image.paste(Image.new("RGB", (100, 100), "blue"), (100, 0))
    result = compress(encode(image, "png"), resize=Resize(50, 50, "cover"))
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.size == (50, 50)
        assert out.convert("RGB").getpixel((25, 25))[2] > 200  # the blue middle, not the red sides


def test_the_exif_orientation_is_applied_before_resizing():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    data = encode(photo(400, 300), "jpeg", exif=exif.tobytes())
    result = compress(data, resize=Resize(max_width=150))
    assert (result.width, result.height) == (150, 200) == size_of(result.data)


def test_a_target_applies_to_the_resized_picture():
    data = image_bytes("png", 600, 400)
    result = compress(data, output="jpeg", target_size=6 * 1024, resize=Resize(max_width=300))
    assert len(result.data) <= 6 * 1024
    assert result.width <= 300 and result.settings.get("scale", 1) <= 1
    assert (result.original_width, result.original_height) == (600, 400)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
@pytest.mark.parametrize("target_size", [None, 10 * 1024 * 1024])
def test_a_resized_result_is_never_larger_than_the_upload(fmt, target_size):
    data = image_bytes(fmt, 200, 150)
    result = compress(data, target_size=target_size, resize=Resize(max_width=120))
    assert (result.width, result.height) == (120, 90)
    assert len(result.data) <= len(data)
    assert result.settings.get("codec") != "input-without-metadata"  # the upload itself is not the answer


def test_a_box_the_picture_already_fits_changes_nothing():
    data = image_bytes("jpeg", 200, 150)
    assert compress(data, resize=Resize(400, 400)).data == compress(data).data
    same = compress(data, target_size=10**6, resize=Resize(max_width=200))
    assert same.data == compress(data, target_size=10**6).data


def test_transparency_survives_the_resize():
    result = compress(image_bytes("png", 200, 100, alpha=True), resize=Resize(max_width=50))
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.size == (50, 25) and out.mode in ("RGBA", "P", "LA")


def test_an_animation_is_resized_as_its_first_frame():
    frames = [photo(120, 80, seed=n) for n in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    result = compress(buffer.getvalue(), resize=Resize(max_width=60))
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.size == (60, 40) and getattr(out, "n_frames", 1) == 1


def test_the_codec_side_limits_are_checked_on_the_resized_size():
    probe = engine.probe(image_bytes("png", 20000, 8), max_pixels=10**8)
    with pytest.raises(InvalidRequestError):
        engine.check_output_limits(probe, "webp")
    engine.check_output_limits(probe, "webp", Resize(max_width=10000))


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(width=st.integers(1, 30000), height=st.integers(1, 30000),
                  box_w=st.one_of(st.none(), st.integers(1, 10000)), box_h=st.one_of(st.none(), st.integers(1, 10000)),
                  cover=st.booleans())
def test_the_size_fits_the_box_keeps_the_shape_and_never_grows(width, height, box_w, box_h, cover):
    hypothesis.assume(box_w or box_h)
    cover = cover and box_w is not None and box_h is not None
    resize = Resize(box_w, box_h, "cover" if cover else "inside")
    out_w, out_h = resize.size_for(width, height)
    assert 1 <= out_w <= width and 1 <= out_h <= height
    assert out_w <= (box_w or out_w) and out_h <= (box_h or out_h)
    if min(out_w, out_h) <= 2:  # a side of a pixel or two holds no shape (it is at least 1)
        return
    if cover:  # the box's shape (as close as whole pixels allow)
        assert abs(out_w / out_h - box_w / box_h) <= box_w / box_h * (1 / out_h + 1 / out_w) + 1e-9
    elif (out_w, out_h) != (width, height):  # the picture's shape, and one side at its limit
        assert abs(out_w / out_h - width / height) <= width / height * (1 / out_h + 1 / out_w) + 1e-9
        assert out_w == box_w or out_h == box_h or min(out_w, out_h) == 1


@pytest.mark.parametrize(("fields", "word"), [
    ({"max_width": 0}, "max_width"), ({"max_width": -3}, "max_width"), ({"max_height": 10001}, "max_height"),
    ({"max_width": 1.5}, "max_width"), ({"max_width": True}, "max_width"), ({"fit": "cover"}, "fit"),
    ({"max_width": 10, "fit": "cover"}, "fit"), ({"max_width": 10, "max_height": 10, "fit": "fill"}, "fit"),
])
def test_the_engine_refuses_a_bad_box_naming_the_field(fields, word):
    with pytest.raises(InvalidRequestError, match=word):
        Resize(**fields)


# -- through the app ------------------------------------------------------------------


def post_json(client, key, data, **fields):
    body = {"file_base64": base64.b64encode(data).decode(), **fields}
    return client.post("/api/v1/compress", headers={"X-API-Key": key}, data=json.dumps(body),
                       content_type="application/json")


def done(client, response):
    assert response.status_code == 202, response.get_json()
    body = wait_for_result(client, response.get_json()["progress_key"])
    assert body["status"] == "done", body
    return body


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_max_width_and_height_reach_the_result(client, user, form, db):
    data = image_bytes("jpeg", 400, 300)
    fields = {"max_width": "200", "max_height": "120", "output": "webp"}
    response = post_file(client, user["key"], data, "a.jpg", **fields) if form == "multipart" else \
        post_json(client, user["key"], data, **fields)
    assert response.get_json().get("warnings", []) == []  # no "ignored field"
    body = done(client, response)
    assert (body["width"], body["height"]) == (160, 120)
    assert (body["original_width"], body["original_height"]) == (400, 300)
    download = client.get(body["download"])
    assert size_of(download.data) == (160, 120)
    row = db.execute("SELECT max_width, max_height, fit, keep_metadata FROM jobs WHERE id = ?",
                     (body["image_id"],)).fetchone()
    assert tuple(row) == (200, 120, "inside", None)


def test_json_takes_integers_and_cover_through_the_app(client, user, db):
    body = done(client, post_json(client, user["key"], image_bytes("png", 300, 200), max_width=64, max_height=64,
                                  fit="Cover"))
    assert (body["width"], body["height"]) == (64, 64)
    row = db.execute("SELECT fit FROM jobs WHERE id = ?", (body["image_id"],)).fetchone()
    assert row[0] == "cover"


BAD_FIELDS = [
    ({"max_width": "0"}, "max_width"), ({"max_width": "-5"}, "max_width"), ({"max_height": "abc"}, "max_height"),
    ({"max_width": "1.5"}, "max_width"), ({"max_width": "10001"}, "max_width"), ({"max_width": "1e3"}, "max_width"),
    ({"max_width": "9" * 5000}, "max_width"), ({"fit": "cover"}, "fit"), ({"fit": "inside", "max_width": "10"}, "fit"),
    ({"fit": "stretch", "max_width": "10", "max_height": "10"}, "fit"),
]


@pytest.mark.parametrize(("fields", "word"), BAD_FIELDS)
@pytest.mark.parametrize("form", ["multipart", "json"])
def test_bad_resize_fields_are_422_naming_the_field(client, user, form, fields, word, db):
    data = image_bytes("png", 40, 30)
    response = post_file(client, user["key"], data, **fields) if form == "multipart" else \
        post_json(client, user["key"], data, **fields)
    assert word in assert_error(response, 422)
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


@pytest.mark.parametrize("value", [0, -1, 1.5, 10001, True, [200], {"w": 1}])
def test_bad_json_sides_are_422(client, user, value):
    assert "max_height" in assert_error(post_json(client, user["key"], image_bytes(), max_height=value), 422)


def test_empty_form_fields_ask_for_nothing(client, user):
    data = image_bytes("png", 40, 30)
    body = done(client, post_file(client, user["key"], data, max_width="", max_height="", fit=""))
    assert (body["width"], body["height"]) == (40, 30)


def test_a_request_without_the_new_fields_is_answered_as_before(client, user):
    data = image_bytes("jpeg", 120, 90, seed=3)
    body = done(client, post_file(client, user["key"], data, "a.jpg", target_size="3KB"))
    limit = client.application.config["MAX_PIXELS"]
    expected = engine.compress(data, output="original", target_size=3 * 1024, max_pixels=limit)
    assert client.get(body["download"]).data == expected.data


def test_a_resize_lets_a_too_wide_image_into_webp(client, user):
    data = image_bytes("png", 20000, 8)
    assert "WEBP" in assert_error(post_file(client, user["key"], data, output="webp"), 422)
    body = done(client, post_file(client, user["key"], data, output="webp", max_width="2000"))
    assert (body["width"], body["height"]) == (2000, 1)


@pytest.mark.pool
def test_the_options_reach_the_pools_child_process(client, user):
    body = done(client, post_file(client, user["key"], image_bytes("png", 200, 100), max_width="50",
                                  keep_metadata="all"))
    assert (body["width"], body["height"]) == (50, 25)


# -- the compressor page ----------------------------------------------------------------


def test_the_compressor_page_offers_max_width_and_metadata_and_sends_them(client, make_user):
    password = "a long enough password 1"
    account = make_user(password=password)

    def token(path):
        page = client.get(path).get_data(as_text=True)
        return re.search(r'<meta name="csrf-token" content="([^"]+)">', page).group(1)

    assert client.post("/login", data={"email": account["email"], "password": password,
                                       "csrf_token": token("/login")}).status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert 'data-testid="max-width"' in page and 'max="10000"' in page and 'value="all_with_location"' in page
    response = client.post("/app/compress", headers={"X-CSRFToken": token("/")},
                           data={"file": (io.BytesIO(image_bytes("png", 120, 60)), "a.png"), "max_width": "30",
                                 "keep_metadata": "copyright"})
    assert response.status_code == 202 and response.get_json()["warnings"] == []
    body = wait_for_result(client, response.get_json()["progress_key"])
    assert (body["width"], body["height"]) == (30, 15)
    bad = client.post("/app/compress", headers={"X-CSRFToken": token("/")},
                      data={"file": (io.BytesIO(image_bytes()), "a.png"), "max_width": "0"})
    assert "max_width" in assert_error(bad, 422)


# -- with an Idempotency-Key: the options are part of the request compared ------------------


def test_an_idempotent_retry_compares_the_resize_and_metadata_as_parsed(client, user, db):
    from imgsmaller import idempotency

    data = image_bytes("png", 80, 60)

    def send(key, **fields):
        return client.post("/api/v1/compress", headers={"X-API-Key": user["key"], idempotency.HEADER: key},
                           data={"file": (io.BytesIO(data), "a.png"), **fields})

    def send_json(key, **fields):
        body = {"file_base64": base64.b64encode(data).decode(), **fields}
        return client.post("/api/v1/compress", headers={"X-API-Key": user["key"], idempotency.HEADER: key},
                           json=body)

    first = send("k1", max_width="40", fit="", keep_metadata="All")
    assert first.status_code == 202
    retries = (send("k1", max_width="040", keep_metadata=" all"), send_json("k1", max_width=40, keep_metadata="ALL"))
    for again in retries:
        assert again.status_code == 202 and again.get_json() == first.get_json()
    for other in ({"max_width": "41", "keep_metadata": "all"}, {"max_width": "40"},
                  {"max_width": "40", "max_height": "40", "keep_metadata": "all"}):
        assert assert_error(send("k1", **other), 422) == idempotency.KEY_REUSED
    # Without the new fields, a key's request is compared as before they existed.
    plain = send("k2")
    assert send("k2", max_width="", keep_metadata="none").get_json() == plain.get_json()
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2


def test_a_version_5_database_gets_the_option_columns_and_its_jobs_ask_for_nothing(tmp_path):
    from imgsmaller import db as database

    path = str(tmp_path / "old.sqlite3")
    database.init_db(path)
    old = database.connect(path)
    old.executescript("ALTER TABLE jobs DROP COLUMN max_width; ALTER TABLE jobs DROP COLUMN max_height;"
                      " ALTER TABLE jobs DROP COLUMN fit; ALTER TABLE jobs DROP COLUMN keep_metadata;"
                      " PRAGMA user_version = 5;")
    old.close()
    database.init_db(path)
    upgraded = database.connect(path)
    try:
        columns = {row[1] for row in upgraded.execute("PRAGMA table_info(jobs)")}
        assert {"max_width", "max_height", "fit", "keep_metadata"} <= columns
        assert database.schema_version(upgraded) == database.SCHEMA_VERSION
    finally:
        upgraded.close()
    assert engine.Resize.of(None, None, None) is None  # what the pool makes of such a job's NULLs
