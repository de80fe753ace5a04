"""HEIC / HEIF input (issue 13): iPhone photos through pillow-heif, made here with its encoder.

Decoding, orientation, colour profile, the pixel limit before decoding, corrupt files
(422, never 500), the primary image of a multi-image file, and `original` = JPEG, which
the never-bigger rule does not bind, while an explicit output keeps it.
"""

import base64
import importlib
import io
import struct

import pillow_heif
import pytest
from PIL import Image, ImageCms

from imgsmaller import engine
from imgsmaller.errors import InvalidImageError, UnsupportedImageError

from helpers import assert_error, post_file, wait_for_result
from images import heic, heic_10bit, photo

decode_module = importlib.import_module("imgsmaller.engine.decode")
heif_limits = importlib.import_module("imgsmaller.engine.heif_limits")

MAX_PIXELS = 50_000_000
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def opened(data):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def with_ispe(data, width, height):
    """The same file with its (first) ispe property claiming width x height."""
    at = data.index(b"ispe")
    return data[:at + 8] + struct.pack(">II", width, height) + data[at + 16:]


def with_brands(data, major, compatible):
    """The same file with other brands in its ftyp box, of the same size (iloc offsets stay right)."""
    size = int.from_bytes(data[:4], "big")
    brands = (major + b"\0\0\0\0" + compatible * size)[:size - 8]
    return data[:8] + brands + data[size:]


def colour_near(pixel, expected, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# -- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("output, expected", [("original", "jpeg"), ("jpeg", "jpeg"), ("jpg", "jpeg"),
                                              ("png", "png"), ("webp", "webp"), ("avif", "avif")])
def test_a_heic_photo_compresses_to_every_output(output, expected):
    data = heic(photo(96, 64), quality=90)
    result = engine.compress(data, output=output, max_pixels=MAX_PIXELS)
    assert result.format == expected and result.original_format == "heic"
    assert (result.width, result.height) == (96, 64) == (result.original_width, result.original_height)
    assert opened(result.data).format.lower() == expected


def test_probe_reports_the_facts_of_a_heic():
    assert engine.probe(heic(photo(50, 40)), max_pixels=MAX_PIXELS) == engine.Probe("heic", 50, 40, 1, False)
    assert engine.probe(heic(photo(50, 40, alpha=True)), max_pixels=MAX_PIXELS).has_alpha


def test_alpha_of_a_heic_is_kept_where_the_output_has_it():
    result = engine.compress(heic(photo(64, 48, alpha=True)), output="webp", max_pixels=MAX_PIXELS)
    assert opened(result.data).mode == "RGBA"


def test_the_heif_orientation_of_an_iphone_photo_is_applied_once():
    picture = Image.new("RGB", (80, 40), (230, 20, 20))
    picture.paste((20, 20, 230), (0, 0, 20, 40))  # blue on the left: on top once turned
    exif = Image.Exif()
    exif[0x0112] = 6
    data = heic(picture, exif=exif.tobytes())
    for output in ("png", "original"):
        result = engine.compress(data, output=output, max_pixels=MAX_PIXELS)
        out = opened(result.data).convert("RGB")
        assert out.size == (40, 80)
        assert colour_near(out.getpixel((20, 5)), (20, 20, 230)), out.getpixel((20, 5))
        assert colour_near(out.getpixel((20, 60)), (230, 20, 20)), out.getpixel((20, 60))
        assert out.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize("output", ["original", "jpeg", "png", "webp", "avif"])
def test_the_icc_profile_of_a_heic_is_kept(output):
    result = engine.compress(heic(photo(64, 48), icc_profile=SRGB), output=output, max_pixels=MAX_PIXELS)
    assert opened(result.data).info.get("icc_profile") == SRGB


def test_a_10_bit_heic_is_decoded_to_8_bits():
    data = heic_10bit(64, 48)
    assert pillow_heif.open_heif(data, convert_hdr_to_8bit=False).info["bit_depth"] == 10
    result = engine.compress(data, output="png", target_size=None, max_pixels=MAX_PIXELS)
    out = opened(result.data).convert("RGB")
    reference = photo(64, 48)
    assert colour_near(out.getpixel((32, 24)), reference.getpixel((32, 24)), tolerance=50)


@pytest.mark.parametrize("output", ["original", "png", "webp", "avif"])
@pytest.mark.parametrize("target", [None, 3000])
def test_a_multi_image_heic_gives_its_primary_image_and_decodes_no_other(decodes, output, target):
    # Pillow's AVIF encoder walks every frame of its image: it once wrote frame 0 (red here).
    data = heic(Image.new("RGB", (48, 32), (230, 20, 20)), Image.new("RGB", (40, 40), (20, 200, 20)),
                Image.new("RGB", (24, 24), (20, 20, 230)), primary_index=1)
    facts = engine.probe(data, max_pixels=MAX_PIXELS)
    assert (facts.frames, facts.width, facts.height) == (3, 40, 40)
    decodes.clear()
    result = engine.compress(data, output=output, target_size=target, max_pixels=MAX_PIXELS)
    out = opened(result.data)
    assert getattr(out, "n_frames", 1) == 1
    out = out.convert("RGB")
    assert out.size == (40, 40) and colour_near(out.getpixel((20, 20)), (20, 200, 20)), out.getpixel((20, 20))
    assert set(decodes) == {(40, 40)}


def test_a_heif_without_heic_brands_is_read_as_heif():
    data = with_brands(heic(photo(48, 32)), b"mif1", b"mif1")
    result = engine.compress(data, output="original", max_pixels=MAX_PIXELS)
    assert (result.original_format, result.format) == ("heif", "jpeg")
    assert "Browsers do not show HEIF" in result.warnings[0]


def test_the_opener_is_registered_once_at_import_not_per_request(monkeypatch):
    assert Image.OPEN["HEIF"][0] is pillow_heif.HeifImageFile
    monkeypatch.setattr(pillow_heif, "register_heif_opener", lambda **kw: pytest.fail("registered again"))
    engine.compress(heic(photo(32, 32)), output="webp", max_pixels=MAX_PIXELS)


def test_without_the_wheel_heic_is_a_415_naming_it(monkeypatch):
    monkeypatch.setattr(decode_module, "HEIF_FORMATS", ())
    with pytest.raises(UnsupportedImageError, match="HEIC files are not supported by this server"):
        engine.probe(heic(photo(32, 32)), max_pixels=MAX_PIXELS)


def test_an_mp4_is_still_a_415():
    mp4 = b"\0\0\0\x18ftypisom\0\0\0\0isommp41" + b"\0" * 64
    with pytest.raises(UnsupportedImageError, match="MP4, QuickTime and other ISO media files"):
        engine.probe(mp4, max_pixels=MAX_PIXELS)


# -- the pixel limit, before decoding; corrupt files ------------------------------------------


@pytest.fixture
def decodes(monkeypatch):
    """Every HEIF image decode pillow-heif starts (BaseImage.load is where the plugin's load decodes)."""
    calls = []
    real = pillow_heif.heif.BaseImage.load

    def counted(self):
        calls.append(self.size)
        return real(self)

    monkeypatch.setattr(pillow_heif.heif.BaseImage, "load", counted)
    return calls


def test_a_heic_claiming_more_pixels_than_the_limit_is_refused_before_decoding(decodes):
    # pillow-heif reports 64x48 (the picture's clap crop of the claimed 10000x10000): the
    # limit is checked on what libheif would decode, the size before the crop.
    data = with_ispe(heic(photo(64, 48)), 10000, 10000)
    assert pillow_heif.open_heif(data).size == (64, 48)
    decodes.clear()  # the encoder's own loads
    with pytest.raises(InvalidImageError, match="10000x10000 pixels; the limit is 50000000"):
        engine.probe(data, max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidImageError, match="10000x10000 pixels"):
        engine.compress(data, output="jpeg", max_pixels=MAX_PIXELS)
    assert decodes == []
    honest = heic(photo(64, 48))
    decodes.clear()
    engine.probe(honest, max_pixels=MAX_PIXELS)
    assert set(decodes) == {(64, 48)}  # the spy does see a decode


def test_a_grid_whose_canvas_is_over_the_limit_is_refused_whatever_its_ispe_says(decodes):
    # libheif allocates the grid descriptor's canvas: 25 MB for 4096x3072 tiles under an ispe of 64x48.
    data = heic(photo(1024, 768), tile_size=256)
    assert pillow_heif.open_heif(data).info["tiling"]["num_columns"] == 4
    data = with_ispe(data, 64, 48)  # the grid's ispe comes first
    decodes.clear()
    with pytest.raises(InvalidImageError, match="1024x768 pixels; the limit is 100000"):
        engine.probe(data, max_pixels=100_000)
    assert decodes == []


def test_a_heif_overlay_is_refused():
    # An overlay's canvas has no ispe to bound it. (This one is no valid overlay, so libheif
    # already refuses it when opening; the check stands behind a valid one.)
    data = heic(photo(64, 48))
    assert data.count(b"hvc1") == 1  # the item type, in iinf
    heif_limits.check_heif_sizes(data, None, max_pixels=MAX_PIXELS)
    with pytest.raises(UnsupportedImageError, match="HEIF overlay images are not supported"):
        heif_limits.check_heif_sizes(data.replace(b"hvc1", b"iovl"), None, max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidImageError):
        engine.probe(data.replace(b"hvc1", b"iovl"), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("cut", [0, 40, 120])
def test_a_heif_whose_sizes_cannot_be_read_is_refused(cut):
    data = heic(photo(64, 48))
    with pytest.raises(InvalidImageError, match="no readable size"):
        heif_limits.check_heif_sizes(data[:cut], None, max_pixels=MAX_PIXELS)


def test_max_pixels_is_enforced_on_heic():
    data = heic(photo(100, 100))
    with pytest.raises(InvalidImageError, match="100x100"):
        engine.probe(data, max_pixels=9999)
    assert engine.probe(data, max_pixels=10000).width == 100


def test_a_heic_whose_frame_is_larger_than_its_container_says_is_refused():
    # The AVIF finding 3 case: ispe 64x64, HEVC frame 1100x1000. libheif refuses a decode
    # larger than the ispe allows (a security limit) before allocating it.
    data = with_ispe(heic(Image.new("RGB", (1100, 1000), (50, 100, 150)), quality=30), 64, 64)
    with pytest.raises(InvalidImageError, match="HEIC image is corrupt"):
        engine.probe(data, max_pixels=1_000_000)


def corrupt_heics():
    data = heic(photo(200, 150), quality=60)
    return {
        "truncated in the image data": data[:len(data) // 2],
        "truncated in the boxes": data[:200],
        "ftyp only": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64,
        "garbage after a heic ftyp": data[:32] + bytes(range(256)) * 8,
    }


CORRUPT = corrupt_heics()


@pytest.mark.parametrize("name", CORRUPT)
def test_a_corrupt_heic_is_an_invalid_image(name):
    with pytest.raises(InvalidImageError, match="HEIC image is corrupt"):
        engine.probe(CORRUPT[name], max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidImageError):
        engine.compress(CORRUPT[name], output="original", max_pixels=MAX_PIXELS)


# -- never bigger: not for original's JPEG, yes for an explicit output ------------------------


@pytest.fixture(scope="module")
def small_heic():
    """A photo-like HEIC at x265's quality 40: a visually lossless JPEG of it is larger."""
    return heic(photo(320, 240, seed=3), quality=40)


def test_original_of_a_heic_is_a_jpeg_not_held_to_the_upload_size(small_heic):
    result = engine.compress(small_heic, output="original", max_pixels=MAX_PIXELS)
    assert result.format == "jpeg" and len(result.data) > len(small_heic)
    assert not result.settings.get("capped_by_input")
    assert result.quality_score >= 80
    assert result.warnings[0].startswith("Browsers do not show HEIC, so 'original' gives JPEG")
    assert "larger than the HEIC upload" in result.warnings[0]


def test_original_of_a_heic_with_a_target_above_its_size_uses_the_target(small_heic):
    target = 4 * len(small_heic)
    result = engine.compress(small_heic, output="original", target_size=target, max_pixels=MAX_PIXELS)
    assert len(small_heic) < len(result.data) <= target


def test_original_of_a_heic_says_so_even_when_smaller(small_heic):
    result = engine.compress(small_heic, output="original", target_size=4096, max_pixels=MAX_PIXELS)
    assert len(result.data) <= 4096
    assert "(this one is smaller)" in result.warnings[0]


@pytest.mark.parametrize("output", ["jpeg", "webp", "avif"])
@pytest.mark.parametrize("target", [None, 10**7])
def test_an_explicit_lossy_output_from_heic_is_never_larger(small_heic, output, target):
    result = engine.compress(small_heic, output=output, target_size=target, max_pixels=MAX_PIXELS)
    assert len(result.data) <= len(small_heic)
    assert not any("Browsers" in warning for warning in result.warnings)


@pytest.mark.parametrize("output", ["jpeg", "webp", "png", "original"])
def test_a_target_size_is_met_from_heic(small_heic, output):
    result = engine.compress(small_heic, output=output, target_size=3000, max_pixels=MAX_PIXELS)
    assert len(result.data) <= 3000


# -- through the API ------------------------------------------------------------------------


def test_info_lists_heic_and_heif(client, user):
    body = client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()
    assert body["supported_input"][-2:] == ["heic", "heif"]


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_an_iphone_photo_comes_back_as_a_jpeg(client, user, small_heic, form):
    if form == "multipart":
        response = post_file(client, user["key"], small_heic, filename="IMG_0001.HEIC")
    else:
        response = client.post("/api/v1/compress", headers={"X-API-Key": user["key"]},
                               json={"file_base64": base64.b64encode(small_heic).decode()})
    assert response.status_code == 202, response.get_json()
    result = wait_for_result(client, response.get_json()["progress_key"])
    assert result["status"] == "done" and result["format"] == "jpeg", result
    assert result["warnings"][0].startswith("Browsers do not show HEIC")
    download = client.get(result["download"])
    assert download.headers["Content-Type"] == "image/jpeg"
    assert opened(download.data).format == "JPEG"


@pytest.mark.parametrize("name", CORRUPT)
def test_a_corrupt_heic_upload_is_422_and_costs_nothing(client, user, name):
    message = assert_error(post_file(client, user["key"], CORRUPT[name], filename="x.heic"), 422)
    assert "HEIC image is corrupt" in message
    info = client.get("/api/v1/info", headers={"X-API-Key": user["key"]}).get_json()
    assert info["remaining_today"] == info["limit"]


def test_a_heic_over_the_pixel_limit_is_422_through_the_api(client, user):
    data = with_ispe(heic(photo(64, 48)), 10000, 10000)
    assert "10000x10000" in assert_error(post_file(client, user["key"], data, filename="x.heic"), 422)
