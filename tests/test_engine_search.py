"""The target search and the input normalisation, without real encoders where possible."""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageCms

from imgsmaller import engine
from imgsmaller.engine import encoders, predicted, search
from imgsmaller.engine import target as tgt

MAX_PIXELS = 50_000_000


def model(base, slope, noise=0.0, seed=0):
    """A fake encoder: size grows exponentially with q, with some jitter."""
    rng = np.random.default_rng(seed)
    jitter = {q: 1 + noise * rng.uniform(-1, 1) for q in range(0, 101)}
    calls = []

    def encode(q):
        calls.append(q)
        return b"x" * int(base * math.exp(slope * q) * jitter[q])
    return encode, calls


@pytest.mark.parametrize("slope", [0.02, 0.035, 0.06])
@pytest.mark.parametrize("target", [3000, 20000, 90000])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_fit_finds_the_highest_fitting_quality_in_few_encodes(slope, target, noise):
    encode, calls = model(1000, slope, noise)
    found = search.fit(encode, target, 1, 100)
    sizes = {q: len(encode(q)) for q in range(1, 101)}
    fitting = [q for q, s in sizes.items() if s <= target]
    assert found.data is not None and len(found.data) <= target
    if noise == 0.0:
        assert found.quality == max(fitting) or len(found.data) >= search.CLOSE_ENOUGH * target
    assert found.encodes <= search.MAX_ENCODES
    assert len(set(calls[: found.encodes])) == found.encodes  # never the same q twice


def test_fit_reports_when_even_the_lowest_quality_is_too_big():
    encode, _ = model(5000, 0.03)
    found = search.fit(encode, 4000, 10, 100)
    assert found.quality is None and found.data is None
    assert found.size_at_lo == len(encode(10))


def test_fit_takes_the_top_quality_when_it_fits():
    encode, _ = model(100, 0.03)
    assert search.fit(encode, 10**9, 1, 100).quality == 100


def rgb(width=64, height=48):
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 4 % 256, y * 5 % 256, (x + y) * 3 % 256], -1).astype(np.uint8))


def save(image, fmt, **params):
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "I;16", "RGBA", "CMYK"])
def test_unusual_pixel_modes_are_normalised(mode):
    image = rgb()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
        assert image.mode.startswith("I;16")
    else:
        image = image.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = save(image, fmt)
    for output in ("jpeg", "png", "webp"):
        result = engine.compress(data, output=output, max_pixels=MAX_PIXELS)
        out = Image.open(io.BytesIO(result.data))
        out.load()
        assert out.size == (64, 48)


def test_palette_png_with_transparency_keeps_it():
    image = rgb().convert("P")
    image.info["transparency"] = 0
    data = save(image, "PNG", transparency=0)
    assert engine.probe(data, max_pixels=MAX_PIXELS).has_alpha
    out = Image.open(io.BytesIO(engine.compress(data, output="webp", max_pixels=MAX_PIXELS).data))
    assert out.mode == "RGBA"


def test_cmyk_jpeg_with_profile_is_converted_to_srgb_and_loses_the_cmyk_profile():
    cmyk = rgb().convert("CMYK")
    fake_cmyk_icc = b"not a real profile"
    data = save(cmyk, "JPEG", icc_profile=fake_cmyk_icc)
    result = engine.compress(data, output="jpeg", max_pixels=MAX_PIXELS)
    out = Image.open(io.BytesIO(result.data))
    assert out.mode == "RGB"
    assert out.info.get("icc_profile") != fake_cmyk_icc


def test_grey_image_with_grey_profile_does_not_attach_it_to_rgb_output():
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any non-RGB profile
    data = save(rgb().convert("L"), "PNG", icc_profile=grey_icc)
    out = Image.open(io.BytesIO(engine.compress(data, output="webp", max_pixels=MAX_PIXELS).data))
    assert out.info.get("icc_profile") is None


def test_jpg_output_alias_gives_jpeg():
    data = save(rgb(), "PNG")
    assert engine.compress(data, output="jpg", target_size=5000, max_pixels=MAX_PIXELS).format == "jpeg"


def test_result_reports_original_facts_and_settings():
    data = save(rgb(120, 80), "PNG")
    result = engine.compress(data, output="webp", target_size=3000, max_pixels=MAX_PIXELS)
    assert (result.original_width, result.original_height, result.original_format) == (120, 80, "png")
    assert result.settings["codec"] == "libwebp"
    assert result.encodes >= 1


def test_fit_refines_between_integers_for_fractional_codecs():
    calls = []

    def encode(q):
        calls.append(q)
        return b"x" * int(1000 * math.exp(0.1 * q))  # 10 % per quality step

    target = int(1000 * math.exp(0.1 * 50.6))
    found = search.fit(encode, target, 0, 100, refine=2)
    assert len(found.data) <= target
    assert 50 < found.quality < 51
    assert any(q != int(q) for q in calls)


def test_ladder_tolerates_sizes_that_are_not_monotonic():
    sizes = {100: 5000, 90: 4000, 80: 3100, 70: 3600, 60: 2500}
    found = search.ladder(lambda q: b"x" * sizes[q], 3500, sizes)
    assert found.quality == 80 and len(found.data) <= 3500
    assert search.ladder(lambda q: b"x" * sizes[q], 1000, sizes).quality is None


def test_strip_png_and_jpeg_drop_metadata_and_keep_pixels():
    from imgsmaller.engine import metadata as codecs
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt, strip in (("PNG", codecs.strip_png), ("JPEG", codecs.strip_jpeg)):
        data = save(rgb(), fmt, exif=exif.tobytes(), icc_profile=icc)
        assert b"CameraMaker" in data
        stripped = strip(data)
        assert b"CameraMaker" not in stripped and len(stripped) < len(data)
        before, after = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(stripped))
        assert after.info.get("icc_profile") == icc
        assert np.array_equal(np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB")))


def test_auto_never_grows_a_tiny_optimal_png():
    data = save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    result = engine.compress(data, output="png", max_pixels=MAX_PIXELS)
    assert len(result.data) <= len(data)
    assert Image.open(io.BytesIO(result.data)).getpixel((0, 0))[:3] == (10, 20, 30)


def test_ladder_up_climbs_to_the_last_fitting_rung():
    sizes = {30: 1000, 40: 1200, 50: 1500, 60: 2100, 70: 2600}
    found = search.ladder_up(lambda q: b"x" * sizes[q], 2000, sizes)
    assert found.quality == 50
    assert search.ladder_up(lambda q: b"x" * sizes[q], 900, sizes).quality is None


class _Counted:
    """A fake encoder: `slope` (10 %) more bytes per quality step, counting its encodes."""

    def __init__(self, scale=1.0, base=1000, slope=0.1):
        self.scale, self.base, self.slope, self.calls = scale, base, slope, []

    def encode(self, q):
        self.calls.append(q)
        return b"x" * int(self.scale * self.base * math.exp(self.slope * q))


@pytest.mark.parametrize("next_over, real_encodes", [(None, 2), (1.04, 1)])
def test_a_fit_is_kept_when_the_predictor_puts_the_next_quality_far_over(next_over, real_encodes):
    real, cheap = _Counted(), _Counted(scale=2.0)   # the predictor's files are twice as big...
    predictor = predicted.Predictor(cheap.encode, lambda: len(cheap.calls), 1.0, shape=lambda q: 0.5)  # ...it says so
    target = int(1000 * math.exp(0.1 * 50) / 0.95)   # q50 fills 95 %, q51 is 5 % over
    stop = predicted.Stopping(aim=0.985, close_enough=0.99, max_real=4, early_exit=False, next_over=next_over)
    found = predicted.predicted_search(real, predictor, predicted.Query(target, 0, 100, 40), stop)
    assert found.quality == 50 and len(found.data) <= target
    assert len(real.calls) == real_encodes and real.calls[0] == 50


def test_a_webp_search_far_over_target_at_the_floor_makes_no_real_encode():
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8), "RGB")
    encoder = encoders.WebpEncoder(noise, None)
    found = tgt.best_fit(encoder, 2000, tgt.floor(encoder), encoder.qmax)
    assert found.quality is None and found.encodes == 0 and encoder.encodes == 0
    assert found.proxy_encodes >= 1 and found.size_at_lo > 2000 * 1.15


@pytest.mark.parametrize("reaim, real_encodes", [(None, 4), (0.995, 3)])
def test_a_calibrated_predictor_aims_inside_the_window_a_fit_is_kept_in(reaim, real_encodes):
    real, cheap = _Counted(base=10000, slope=0.01), _Counted(scale=1.03, base=10000, slope=0.01)  # 3 % high
    predictor = predicted.Predictor(cheap.encode, lambda: len(cheap.calls), 1.0)
    target = int(10000 * math.exp(0.01 * 60) / 0.996)   # q60 fills 99.6 %, q61 is over
    stop = predicted.Stopping(aim=0.985, close_enough=0.99, max_real=6, early_exit=False, reaim=reaim)
    found = predicted.predicted_search(real, predictor, predicted.Query(target, 0, 100, 50), stop)
    assert found.quality == 60 and len(real.calls) == real_encodes


def repacking(base, slope, ratio_at, seed=0, noise=0.0):
    """A fake jpegli + mozjpeg: trial(q) grows exponentially with q, pack() shrinks it by ratio_at(q)."""
    rng = np.random.default_rng(seed)
    jitter = {q: 1 + noise * rng.uniform(-1, 1) for q in range(0, 101)}
    calls = {"trial": [], "pack": 0}

    def trial(q):
        calls["trial"].append(q)
        return bytes([q]) * int(base * math.exp(slope * q) * jitter[q])

    def pack(data):
        calls["pack"] += 1
        return b"p" * int(len(data) * ratio_at(data[0]))
    return trial, pack, calls


@pytest.mark.parametrize("target", [3000, 20000, 90000])
@pytest.mark.parametrize("ratio", [0.85, 0.92, 0.97])
@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_fit_repacked_finds_the_highest_fitting_quality_with_few_packs(target, ratio, noise):
    trial, pack, calls = repacking(1000, 0.035, lambda q: ratio + 0.0003 * (q - 50), noise=noise)
    found = search.fit_repacked(trial, pack, target, 1, 100, start=40, ratio=0.92)
    packs, trials = calls["pack"], list(calls["trial"])
    fitting = [q for q in range(1, 101) if len(pack(trial(q))) <= target]
    assert found.data is not None and len(found.data) <= target
    assert found.quality == max(fitting) or len(found.data) >= search.CLOSE_ENOUGH * target
    assert packs == found.encodes <= 3 and len(trials) == found.proxy_encodes <= 8
    assert len(trials) == len(set(trials))   # each quality's trial made once


def test_fit_repacked_never_returns_a_pack_over_the_target_when_the_ratio_jumps():
    # The ratio jumps by 3 % between two qualities: a prediction from the neighbour is wrong.
    trial, pack, _ = repacking(1000, 0.03, lambda q: 0.88 if q < 61 else 0.91)
    for target in range(4500, 6500, 50):
        found = search.fit_repacked(trial, pack, target, 1, 100, start=30, ratio=0.92)
        assert len(found.data) <= target
        best = max(q for q in range(1, 101) if len(pack(trial(q))) <= target)
        assert found.quality == best or len(found.data) >= search.CLOSE_ENOUGH * target


def test_fit_repacked_reports_the_packed_size_at_lo_when_nothing_fits():
    trial, pack, calls = repacking(5000, 0.03, lambda q: 0.9)
    found = search.fit_repacked(trial, pack, 4000, 20, 100, start=40, ratio=0.92)
    assert found.quality is None and found.data is None
    assert found.size_at_lo == len(pack(trial(20))) and found.sizes == {20: found.size_at_lo}
    assert found.encodes == 1


@pytest.mark.parametrize("seed", range(20))
def test_highest_within_matches_a_scan_and_uses_what_is_known(seed):
    rng = np.random.default_rng(seed)
    sizes = dict(zip(range(0, 101), (int(s) for s in np.cumsum(rng.uniform(1, 200, 101))), strict=True))
    limit = int(rng.uniform(sizes[0] - 50, sizes[100] + 50))
    low, high = sorted(int(v) for v in rng.integers(0, 101, 2))
    known = {int(q): sizes[int(q)] for q in rng.integers(0, 101, 3)}
    measured = []

    def size_at(q):
        measured.append(q)
        return sizes[q]
    expected = max((q for q in range(low, high + 1) if sizes[q] <= limit), default=None)
    assert search.highest_within(size_at, limit, low, high, 50, known) == expected
    assert not set(measured) & set(known) and len(measured) == len(set(measured))


def test_fit_repacked_makes_a_dropped_trial_again_when_a_repack_halves_it():
    # Trials over target / KEEP_BELOW_RATIO are not kept; a repack that halves them still finds the answer.
    trial, pack, calls = repacking(1000, 0.03, lambda q: 0.5)
    found = search.fit_repacked(trial, pack, 6000, 1, 100, start=40, ratio=0.92)
    assert found.quality == max(q for q in range(1, 101) if len(pack(trial(q))) <= 6000)
    assert len(found.data) <= 6000
