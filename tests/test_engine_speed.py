"""The target searches' shortcuts (issue 11): no encode where a measured prediction already decides."""

import math

import numpy as np
import pytest
from PIL import Image

from imgsmaller.engine import encoders, predicted, search
from imgsmaller.engine import target as tgt


def _repacking(base, slope, ratio):
    """A fake jpegli + mozjpeg: trials grow exponentially with q, pack() shrinks them by `ratio`."""
    calls = {"trial": 0, "pack": 0}

    def trial(q):
        calls["trial"] += 1
        return b"t" * int(base * math.exp(slope * q))

    def pack(data):
        calls["pack"] += 1
        return b"p" * int(len(data) * ratio)
    return trial, pack, calls


@pytest.mark.parametrize("over, packs", [(1.10, 0), (1.01, 1)])
def test_a_floor_measured_far_over_is_not_repacked(over, packs):
    trial, pack, calls = _repacking(5000, 0.03, 0.9)
    target = int(len(pack(trial(20))) / over)
    calls["pack"] = 0
    found = search.fit_repacked(trial, pack, target, 20, 100, start=40, ratio=0.92,
                                floor_ratio=lambda q: 0.9, hopeless=1.03)
    assert found.quality is None and found.data is None and calls["pack"] == packs == found.encodes
    assert abs(found.size_at_lo - len(pack(trial(20)))) <= 1


def test_a_floor_that_fits_by_the_measured_ratio_is_repacked_and_kept():
    trial, pack, calls = _repacking(5000, 0.03, 0.8)   # the constant guess (0.92) says lo is over; it is not
    target = int(len(pack(trial(20))) * 1.001)
    found = search.fit_repacked(trial, pack, target, 20, 100, start=40, ratio=0.92,
                                floor_ratio=lambda q: 0.8, hopeless=1.03)
    assert found.quality == 20 and len(found.data) <= target


class _Sized:
    """An encode function of exponential sizes, counting its calls."""

    def __init__(self, scale=1.0):
        self.scale, self.calls = scale, []

    def encode(self, q):
        self.calls.append(q)
        return b"x" * int(self.scale * 1000 * math.exp(0.05 * q))


@pytest.mark.parametrize("real_over, real_encodes", [(1.06, 0), (1.01, 1)])
def test_a_better_floor_prediction_decides_between_the_two_thresholds(real_over, real_encodes):
    real, cheap = _Sized(), _Sized(scale=1.08)    # the cheap predictor is 8 % high: lo ~1.09-1.14 over, < 1.15
    better = _Sized()
    target = int(len(real.encode(20)) / real_over)
    real.calls.clear()
    predictor = predicted.Predictor(cheap.encode, lambda: len(cheap.calls), 1.0)
    stop = predicted.Stopping(aim=0.985, close_enough=0.99, max_real=4, early_exit=True,
                              floor_size=lambda q: len(better.encode(q)), floor_over=1.03)
    found = predicted.predicted_search(real, predictor, predicted.Query(target, 20, 100, 40), stop)
    assert found.quality is None and len(real.calls) == real_encodes and better.calls == [20]


def _noisy(width, height, seed=5):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 17), 128 + 100 * np.cos(y / 23), 128 + 80 * np.sin((x + y) / 31)], -1)
    return Image.fromarray(np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def big_encoder():
    if not encoders.JpegEncoder(_noisy(16, 16), None).can_predict:
        pytest.skip("needs pyjpegli and mozjpeg")
    return encoders.JpegEncoder(_noisy(2048, 1600), None)    # 3.3 MP: the proxy path


def test_a_big_jpeg_search_repacks_only_the_quality_it_keeps(big_encoder, monkeypatch):
    packs = []
    pack = encoders.JpegEncoder.pack
    monkeypatch.setattr(big_encoder, "pack", lambda data: packs.append(1) or pack(big_encoder, data))
    size_at_40 = len(pack(big_encoder, big_encoder.encode_raw(40)))
    found = tgt.best_fit(big_encoder, size_at_40 + 10, 20, big_encoder.qmax)
    assert found.quality is not None and len(found.data) <= size_at_40 + 10
    assert found.quality >= 40 and len(packs) == found.encodes <= 2 and found.proxy_encodes >= 3


def test_a_big_jpeg_far_over_at_the_floor_makes_no_full_size_encode(big_encoder, monkeypatch):
    calls = []
    monkeypatch.setattr(big_encoder, "encode_raw", lambda q: calls.append(q))
    found = tgt.best_fit(big_encoder, 20_000, 20, big_encoder.qmax)
    assert found.quality is None and found.encodes == 0 and calls == []
    assert found.size_at_lo > 20_000 * tgt.BIG_EARLY_OVER
