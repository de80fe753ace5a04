"""Hostile inputs the engine's probe must refuse before the 202 (issue 14, findings 3, 9 and 10).

Through the real app: corrupt AVIFs whose decoder errors were 500s (reproducers in
tests/data, found by mutating Pillow-encoded AVIFs), AVIFs whose AV1 frame is larger
than their container says, and images no output codec of the request can hold.
"""

import importlib
import io
import pathlib
import struct

import pytest
from PIL import Image

from imgsmaller import engine
from imgsmaller.errors import InvalidImageError, InvalidRequestError

from helpers import build_app, shut_down
from images import image_bytes

probe_module = importlib.import_module("imgsmaller.engine.decode")

DATA = pathlib.Path(__file__).parent / "data"
# What each committed reproducer made Pillow 13.0 (libavif 1.4.2, dav1d 1.5.3) raise.
CORRUPT_AVIF = {
    "avif-color-planes-failed.avif": "RuntimeError: Decoding of color planes failed",
    "avif-alpha-plane-failed.avif": "RuntimeError: Decoding of alpha plane failed",
    "avif-missing-image-item.avif": "RuntimeError: Missing or empty image item",
    "avif-not-implemented.avif": "RuntimeError: Not implemented",
    "avif-reformat-failed.avif": "RuntimeError: Reformat failed",
    "avif-zero-timescale.avif": "ZeroDivisionError: a track timescale of 0",
}
# The real frame of the mismatched AVIF, and the limit it must not slip under.
FRAME = (1100, 1000)
MAX_PIXELS = 1_000_000


def post_file(client, key, data, **fields):
    return client.post("/api/v1/compress", headers={"X-API-Key": key},
                       data={"file": (io.BytesIO(data), "upload"), **fields})


def assert_error(response, status):
    assert response.status_code == status, (response.status_code, response.data[:300])
    body = response.get_json()
    assert set(body) == {"message"} and body["message"]
    return body["message"]


def remaining_today(client, key):
    return client.get("/api/v1/info", headers={"X-API-Key": key}).get_json()["remaining_today"]


def avif(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "AVIF", speed=10, **options)
    return buffer.getvalue()


def with_ispe(data, width, height):
    """The same file with its (first) ispe property claiming width x height."""
    at = data.index(b"ispe")
    return data[:at + 8] + struct.pack(">II", width, height) + data[at + 16:]


@pytest.fixture(scope="session")
def mismatched_avif():
    """A 590-byte AVIF whose ispe says 64x64 and whose AV1 frame is 1100x1000 (encoded once)."""
    return with_ispe(avif(Image.new("RGB", FRAME, (50, 100, 150))), 64, 64)


@pytest.fixture
def small_app(tmp_path):
    app = build_app(tmp_path, MAX_PIXELS=MAX_PIXELS)
    yield app
    shut_down(app)


# -- every decoder error is a 422 -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORRUPT_AVIF))
def test_corrupt_avifs_are_422_not_500(client, user, name):
    data = (DATA / name).read_bytes()
    message = assert_error(post_file(client, user["key"], data), 422)
    assert "AVIF image is corrupt" in message
    assert remaining_today(client, user["key"]) == 100
    with pytest.raises(InvalidImageError):
        engine.probe(data, max_pixels=50_000_000)


def test_an_unknown_decoder_error_is_a_422_and_logged(monkeypatch, caplog):
    class Surprise(Exception):
        pass

    def broken(fp, filename):
        raise Surprise("a decoder bug")

    monkeypatch.setitem(probe_module._FACTORIES, "png", broken)
    with pytest.raises(InvalidImageError):
        engine.probe(image_bytes("png"), max_pixels=50_000_000)
    assert "PNG decoder raised Surprise: a decoder bug" in caplog.text


# -- AVIF: the limit holds for what is decoded ---------------------------------------------


def test_an_avif_whose_frame_is_larger_than_its_container_is_refused(small_app, make_user, mismatched_avif):
    # Before the fix: 202 — the probe saw 64x64 and decoded 1.1 MP (16000x16000: ~530 MB).
    client, key = small_app.test_client(), make_user()["key"]
    message = assert_error(post_file(client, key, mismatched_avif), 422)
    assert "container says 64x64 pixels but its AV1 item holds frames of up to 1100x1000" in message
    assert remaining_today(client, key) == 100


def test_the_same_avif_with_an_honest_container_is_judged_by_its_real_size(small_app, make_user, mismatched_avif):
    client, key = small_app.test_client(), make_user()["key"]
    honest = with_ispe(mismatched_avif, *FRAME)
    assert "the limit is 1000000" in assert_error(post_file(client, key, honest), 422)
    engine.probe(honest, max_pixels=FRAME[0] * FRAME[1])  # and it is a valid image


def test_a_frame_over_the_limit_is_refused_even_in_an_item_the_size_check_does_not_see(mismatched_avif):
    honest = with_ispe(mismatched_avif, *FRAME)
    with pytest.raises(InvalidImageError, match="holds an AV1 frame of 1100x1000 pixels; the limit is 1000000"):
        probe_module.check_avif_frames(honest, max_pixels=MAX_PIXELS)


def test_the_frames_decoded_together_are_bounded(mismatched_avif):
    # Three honest 1.1 MP items in one file (an alpha plane, grid tiles...): 3.3 MP
    # decoded for a picture the size check saw as 1.1 MP.
    honest = with_ispe(mismatched_avif, *FRAME)
    three = three_items(honest)
    engine.probe(honest, max_pixels=FRAME[0] * FRAME[1])
    with pytest.raises(InvalidImageError, match="frames total 3300000 pixels"):
        probe_module.check_avif_frames(three, max_pixels=FRAME[0] * FRAME[1])
    probe_module.check_avif_frames(three, max_pixels=2 * FRAME[0] * FRAME[1])  # within 2.5x


@pytest.mark.parametrize("kind", ["still", "alpha", "animated", "animated-alpha", "odd-sized", "444"])
def test_ordinary_avifs_pass_the_frame_check(kind):
    rgba = Image.new("RGBA", (33, 17), (10, 20, 30, 40))
    rgba.putpixel((0, 0), (1, 2, 3, 255))
    data = {
        "still": lambda: avif(Image.new("RGB", (32, 24), (50, 100, 150))),
        "alpha": lambda: avif(rgba),
        "animated": lambda: avif(Image.new("RGB", (32, 24)), save_all=True,
                                 append_images=[Image.new("RGB", (32, 24), (9, 9, 9))]),
        "animated-alpha": lambda: avif(rgba, save_all=True, append_images=[Image.new("RGBA", (33, 17))]),
        "odd-sized": lambda: avif(Image.new("RGB", (33, 17), (5, 6, 7))),
        "444": lambda: avif(Image.new("RGB", (40, 30), (5, 6, 7)), subsampling="4:4:4"),
    }[kind]()
    facts = engine.probe(data, max_pixels=40 * 30)
    assert facts.format == "avif"


# -- output codec limits, before the 202 -------------------------------------------------------


def tiny_png(width, height):
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize("size, output, limit", [
    ((2, 16384), "webp", "WEBP output is limited to 16383 pixels per side"),
    ((16384, 2), "webp", "WEBP output is limited to 16383 pixels per side"),
    ((65501, 1), "jpeg", "JPEG output is limited to 65500 pixels per side"),
    ((65501, 1), "jpg", "JPEG output is limited to 65500 pixels per side"),
    ((1, 32769), "avif", "AVIF output is limited to 32768 pixels per side"),
])
def test_an_image_the_output_codec_cannot_hold_is_422_before_anything_is_charged(client, user, size, output, limit):
    # Before the fix: 202, charged, then "could not be processed" with a traceback.
    data = tiny_png(*size)
    assert len(data) < 256
    message = assert_error(post_file(client, user["key"], data, output=output, target_size="auto"), 422)
    assert limit in message and f"{size[0]}x{size[1]}" in message
    assert remaining_today(client, user["key"]) == 100


def test_the_same_image_is_accepted_for_a_codec_that_can_hold_it(client, user):
    assert post_file(client, user["key"], tiny_png(2, 16384), output="png").status_code == 202


def test_the_engine_refuses_it_too(tmp_path):
    with pytest.raises(InvalidRequestError, match="16383 pixels per side"):
        engine.compress(tiny_png(2, 16384), output="webp", max_pixels=50_000_000)
    limits = probe_module.check_output_limits
    limits(engine.Probe("png", 16383, 16383, 1, False), "webp")  # the largest WebP passes
    limits(engine.Probe("avif", 32768, 2, 1, False), "original")


# -- a test-side ISO-BMFF rewrite ------------------------------------------------------


def box(kind, body):
    return struct.pack(">I", 8 + len(body)) + kind + body


def boxes(data):
    """{type: body} of the boxes in `data` (32-bit sizes: all Pillow writes for small files)."""
    found, pos = {}, 0
    while pos < len(data):
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        found[data[pos + 4:pos + 8]] = data[pos + 8:pos + size]
        pos += size
    return found


def three_items(data):
    """`data`, a one-item AVIF from Pillow, rewritten to hold three av01 items sharing its AV1 data."""
    top = boxes(data)
    meta = boxes(top[b"meta"][4:])
    ipco = boxes(meta[b"iprp"])[b"ipco"]
    av1c_index = list(boxes(ipco)).index(b"av1C") + 1
    ispe_index = list(boxes(ipco)).index(b"ispe") + 1
    items = (1, 2, 3)
    full = b"\x00\x00\x00\x00"  # version 0, flags 0
    iinf = box(b"iinf", full + struct.pack(">H", len(items)) + b"".join(
        box(b"infe", b"\x02\x00\x00\x00" + struct.pack(">HH", i, 0) + b"av01\x00") for i in items))
    ipma = box(b"ipma", full + struct.pack(">I", len(items)) + b"".join(
        struct.pack(">HBBB", i, 2, ispe_index, 0x80 | av1c_index) for i in items))
    iprp = box(b"iprp", box(b"ipco", ipco) + ipma)
    pitm = box(b"pitm", full + struct.pack(">H", 1))
    ftyp = box(b"ftyp", top[b"ftyp"])
    payload = top[b"mdat"]

    def meta_box(offset):
        iloc = box(b"iloc", full + b"\x44\x00" + struct.pack(">H", len(items)) + b"".join(
            struct.pack(">HHHII", i, 0, 1, offset, len(payload)) for i in items))
        return box(b"meta", full + box(b"hdlr", meta[b"hdlr"]) + pitm + iloc + iinf + iprp)

    offset = len(ftyp) + len(meta_box(0)) + 8
    return ftyp + meta_box(offset) + box(b"mdat", payload)


@pytest.mark.parametrize("tail", [b"\x00\x00\x00", b"garbage!!!!!", b"\x00\x00\x00\x05junk"])
def test_trailing_bytes_after_the_boxes_are_tolerated_as_by_libavif(tail):
    data = avif(Image.new("RGB", (32, 24), (50, 100, 150))) + tail
    assert engine.probe(data, max_pixels=32 * 24).format == "avif"


# -- HEIC (issue 13): pillow-heif's errors are the file's too ------------------------------


def test_an_unknown_heic_decoder_error_is_a_422_and_logged(monkeypatch, caplog):
    import pillow_heif

    from images import heic

    class Surprise(Exception):
        pass

    data = heic(Image.new("RGB", (32, 32), (10, 20, 30)))

    def broken(self):
        raise Surprise("a libheif surprise")

    monkeypatch.setattr(pillow_heif.heif.BaseImage, "load", broken)
    with pytest.raises(InvalidImageError, match="HEIC image is corrupt"):
        engine.probe(data, max_pixels=50_000_000)
    assert "HEIC decoder raised Surprise: a libheif surprise" in caplog.text


def test_a_png_cut_inside_its_iend_gives_a_whole_png_within_the_target():
    # Found by tests/test_fuzz.py: Pillow decodes and verifies such an upload, and the
    # "upload minus its metadata" answer (a target at its size) lost the IEND chunk.
    data = image_bytes("png", 16, 16)[:-2]
    engine.probe(data, max_pixels=50_000_000)
    for target in (len(data), len(data) + 100):
        result = engine.compress(data, output="original", target_size=target, max_pixels=50_000_000)
        assert len(result.data) <= target and result.data.endswith(b"IEND\xaeB`\x82")
        engine.probe(result.data, max_pixels=50_000_000)
