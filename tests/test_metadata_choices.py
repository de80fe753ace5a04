"""keep_metadata (issue 13): what each choice keeps, and that what should go is gone from the bytes."""

import base64
import io
import json

import pytest
from PIL import Image, ImageCms

from imgsmaller import engine
from imgsmaller.engine import metadata
from imgsmaller.errors import InvalidRequestError

from helpers import assert_error, post_file, wait_for_result
from images import encode, image_bytes, photo

pytestmark = pytest.mark.engines

ARTIST, COPYRIGHT, MAKE, DATUM = "Ann Example", "(c) 2026 Ann Example", "CameraMaker", "WGS-84-SECRET"
TAKEN = "2026:05:06 07:08:09"
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:e="http://ns.adobe.com/exif/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
       b' xmlns:dc="http://purl.org/dc/elements/1.1/" e:GPSLatitude="51,30.1N" tiff:Orientation="6"'
       b' dc:format="XMP-MARK"><e:GPSLongitude>0,7.5W</e:GPSLongitude></rdf:Description></rdf:RDF></x:xmpmeta>')


def camera_exif():
    exif = Image.Exif()
    exif[0x013B], exif[0x8298], exif[0x010F], exif[0x0112] = ARTIST, COPYRIGHT, MAKE, 6
    exif[0x8769] = {0x9003: TAKEN, 0x829A: (1, 250)}
    exif[0x8825] = {0x0001: "N", 0x0002: (51.0, 30.0, 6.0), 0x0012: DATUM}
    return exif.tobytes()


def camera_jpeg(width=320, height=240):
    return encode(photo(width, height), "jpeg", quality=92, exif=camera_exif(), icc_profile=ICC, xmp=XMP)


def compress(data, **options):
    return engine.compress(data, max_pixels=10**8, **options)


def read(data):
    """(exif, the sub-IFDs, xmp bytes, icc) of an output."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        exif = image.getexif()
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
        if isinstance(xmp, str):
            xmp = xmp.encode()
        return exif, exif.get_ifd(0x8769), exif.get_ifd(0x8825), xmp, image.info.get("icc_profile")


@pytest.mark.parametrize("output", ["jpeg", "webp", "png"])
@pytest.mark.parametrize("target_size", [None, 40 * 1024])
def test_none_keeps_only_the_colour_profile(output, target_size):
    result = compress(camera_jpeg(), output=output, target_size=target_size)
    exif, sub, gps, xmp, icc = read(result.data)
    assert not len(exif) and not xmp and icc == ICC
    for secret in (ARTIST.encode(), MAKE.encode(), DATUM.encode(), b"XMP-MARK"):
        assert secret not in result.data


@pytest.mark.parametrize("output", ["jpeg", "webp", "png", "avif"])
def test_copyright_keeps_who_and_when_and_nothing_else(output):
    result = compress(camera_jpeg(), output=output, keep_metadata="copyright")
    exif, sub, gps, xmp, icc = read(result.data)
    assert (exif.get(0x013B), exif.get(0x8298), sub.get(0x9003)) == (ARTIST, COPYRIGHT, TAKEN)
    assert 0x010F not in exif and 0x829A not in sub and not gps and 0x0112 not in exif
    assert not xmp and icc == ICC
    assert DATUM.encode() not in result.data and MAKE.encode() not in result.data


@pytest.mark.parametrize("output", ["jpeg", "webp", "png"])
def test_all_keeps_everything_but_the_location(output):
    result = compress(camera_jpeg(), output=output, keep_metadata="all")
    exif, sub, gps, xmp, icc = read(result.data)
    assert (exif.get(0x013B), exif.get(0x010F), sub.get(0x9003)) == (ARTIST, MAKE, TAKEN) and 0x829A in sub
    assert not gps and 0x8825 not in exif and 0x0112 not in exif
    assert b"XMP-MARK" in xmp and b"GPS" not in xmp and b"Orientation" not in xmp
    assert DATUM.encode() not in result.data and b"51,30.1N" not in result.data and b"0,7.5W" not in result.data
    assert icc == ICC


@pytest.mark.parametrize("output", ["jpeg", "webp", "png", "avif"])
def test_all_with_location_keeps_the_gps_position_too(output):
    result = compress(camera_jpeg(), output=output, keep_metadata="all_with_location")
    exif, sub, gps, xmp, icc = read(result.data)
    assert gps.get(0x0012) == DATUM and gps.get(0x0001) == "N"
    assert b"51,30.1N" in xmp and b"0,7.5W" in xmp
    assert 0x0112 not in exif and b"Orientation" not in xmp  # orientation is applied in every case
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (240, 320)  # the upload was stored landscape with orientation 6


def test_the_orientation_tag_is_gone_and_the_pixels_turned():
    result = compress(camera_jpeg(), keep_metadata="all")
    assert (result.width, result.height) == (240, 320)
    assert 0x0112 not in read(result.data)[0]


@pytest.mark.parametrize("output", ["jpeg", "webp", "png", "avif"])
def test_a_target_holds_with_the_metadata_in(output):
    target = 12 * 1024
    result = compress(camera_jpeg(), output=output, target_size=target, keep_metadata="all_with_location")
    assert len(result.data) <= target
    assert read(result.data)[0].get(0x013B) == ARTIST


@pytest.mark.parametrize("target_size", [None, 10 * 1024 * 1024])
def test_a_result_with_metadata_is_still_never_larger_than_the_upload(target_size):
    data = camera_jpeg()
    result = compress(data, target_size=target_size, keep_metadata="all_with_location")
    assert len(result.data) <= len(data)
    assert read(result.data)[0].get(0x013B) == ARTIST


def test_the_upload_itself_carries_the_metadata_kept():
    data = encode(photo(200, 150), "jpeg", quality=80, exif=Image.Exif().tobytes())
    exif = Image.Exif()
    exif[0x013B] = ARTIST
    exif[0x8825] = {0x0012: DATUM}
    data = encode(photo(200, 150), "jpeg", quality=80, exif=exif.tobytes())
    result = compress(data, target_size=len(data) + 1024, keep_metadata="copyright")
    assert result.settings["codec"] == "input-without-metadata"
    assert len(result.data) <= len(data) and read(result.data)[0].get(0x013B) == ARTIST
    assert DATUM.encode() not in result.data


def test_png_and_webp_uploads_give_their_exif_too():
    exif = Image.Exif()
    exif[0x013B] = ARTIST
    for fmt in ("png", "webp"):
        data = encode(photo(120, 90), fmt, exif=exif.tobytes())
        result = compress(data, output="jpeg", keep_metadata="copyright")
        assert read(result.data)[0].get(0x013B) == ARTIST, fmt


@pytest.mark.parametrize("target_size", [None, 6 * 1024])
def test_avif_results_carry_it_in_their_own_encode(target_size):
    plain = compress(camera_jpeg(160, 120), output="avif", target_size=target_size)
    result = compress(camera_jpeg(160, 120), output="avif", target_size=target_size, keep_metadata="all")
    exif, sub, gps, xmp, icc = read(result.data)
    assert (exif.get(0x013B), sub.get(0x9003)) == (ARTIST, TAKEN) and not gps and 0x0112 not in exif
    assert b"XMP-MARK" in xmp and b"GPS" not in xmp and DATUM.encode() not in result.data
    assert result.settings["quality"] <= plain.settings["quality"]  # the budget less the metadata
    assert len(result.data) <= (target_size or len(camera_jpeg(160, 120)))
    assert result.warnings == plain.warnings


def test_an_upload_without_metadata_is_answered_as_without_the_choice():
    data = image_bytes("jpeg", 120, 90)
    assert compress(data, keep_metadata="all").data == compress(data).data


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("alpha", [False, True])
def test_attach_adds_what_overhead_says_and_the_file_still_decodes(fmt, alpha):
    kept = metadata.Kept(exif=camera_exif()[6:], xmp=XMP + b" ")  # an odd length, for WebP's padding
    data = encode(photo(50, 40, alpha=alpha and fmt != "jpeg"), fmt)
    out = metadata.attach(data, fmt, kept, has_alpha=alpha and fmt != "jpeg")
    grown = len(out) - len(data)
    assert grown == metadata.overhead(kept, fmt) or (fmt == "webp" and grown == metadata.overhead(kept, fmt) - 18)
    with Image.open(io.BytesIO(out)) as image:
        image.load()
        assert image.size == (50, 40) and image.getexif().get(0x013B) == ARTIST
    if fmt == "webp":
        assert int.from_bytes(out[4:8], "little") == len(out) - 8


@pytest.mark.parametrize("alpha", [False, True])
def test_attach_reads_the_canvas_of_a_lossless_webp(alpha):
    data = encode(photo(37, 23, alpha=alpha), "webp", lossless=True)
    assert data[12:16] == b"VP8L"
    out = metadata.attach(data, "webp", metadata.Kept(exif=camera_exif()[6:], xmp=None), has_alpha=alpha)
    with Image.open(io.BytesIO(out)) as image:
        image.load()
        assert image.size == (37, 23) and image.getexif().get(0x013B) == ARTIST
        assert image.mode == ("RGBA" if alpha else "RGB")


def test_a_bad_choice_is_refused_by_the_engine():
    with pytest.raises(InvalidRequestError, match="keep_metadata"):
        compress(image_bytes(), keep_metadata="everything")


# -- through the app ------------------------------------------------------------------


def post_json(client, key, data, **fields):
    body = {"file_base64": base64.b64encode(data).decode(), **fields}
    return client.post("/api/v1/compress", headers={"X-API-Key": key}, data=json.dumps(body),
                       content_type="application/json")


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_keep_metadata_through_both_body_forms(client, user, db, form):
    data = camera_jpeg()
    post = post_file if form == "multipart" else post_json
    response = post(client, user["key"], data, keep_metadata="Copyright", output="webp")
    assert response.status_code == 202 and not response.get_json().get("warnings")
    body = wait_for_result(client, response.get_json()["progress_key"])
    assert body["status"] == "done", body
    out = client.get(body["download"]).data
    assert read(out)[0].get(0x013B) == ARTIST and DATUM.encode() not in out
    row = db.execute("SELECT keep_metadata FROM jobs WHERE id = ?", (body["image_id"],)).fetchone()
    assert row[0] == "copyright"


@pytest.mark.parametrize("value", ["everything", "gps", "1"])
@pytest.mark.parametrize("form", ["multipart", "json"])
def test_a_bad_keep_metadata_is_422_naming_the_field(client, user, form, value):
    post = post_file if form == "multipart" else post_json
    assert "keep_metadata" in assert_error(post(client, user["key"], image_bytes(), keep_metadata=value), 422)


@pytest.mark.parametrize("value", [True, 3, ["all"]])
def test_a_json_keep_metadata_must_be_text(client, user, value):
    assert "keep_metadata" in assert_error(post_json(client, user["key"], image_bytes(), keep_metadata=value), 422)


def test_the_default_strips_everything_through_the_app(client, user):
    response = post_file(client, user["key"], camera_jpeg(), "a.jpg")
    body = wait_for_result(client, response.get_json()["progress_key"])
    out = client.get(body["download"]).data
    assert not len(read(out)[0]) and ARTIST.encode() not in out


def test_a_downscaled_avif_carries_the_metadata_within_its_target():
    result = compress(camera_jpeg(640, 480), output="avif", target_size=1500, keep_metadata="copyright")
    assert len(result.data) <= 1500 and result.width < 480
    assert read(result.data)[0].get(0x013B) == ARTIST
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (result.width, result.height)
