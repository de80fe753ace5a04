"""Fuzzing the engine, bounded (issue 14): mutated JPEG/PNG/WebP/AVIF/HEIC through probe and compress.

The mutators are bench/fuzz.py's (bit flips, stomps, truncation, chunk/box splicing
across formats, dimension patches of PNG IHDR, JPEG SOF, WebP VP8/VP8L/VP8X and AVIF and HEIC
ispe, cross-format grafts), driven here by Hypothesis so a failure is shrunk to a
small reproducer. Fixed seed (derandomize), 500 cases per format: about a minute on
two shared cores. Every case must end as a result within its target or as an error of
the service's family (ServiceError); the long run is `python -m bench.fuzz`.
"""

import importlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz

SEEDS = fuzz.make_seeds(heic=False)
# The formats before HEIC keep their seeds and donor pool, so their derandomized cases stay
# the ones they were; the HEIC seeds are made only for HEIC's cases, which take donors from
# every format, as every format's do in the long run (python -m bench.fuzz: bench/RESULTS.md).
_POOLS = {}


def pool(fmt):
    if fmt != "heic":
        return SEEDS
    if not _POOLS:
        _POOLS.update(fuzz.make_seeds())
    return _POOLS
CASES_PER_FORMAT = 500


class DrawSource:
    """bench.fuzz's Source of choices, drawn from Hypothesis (so failures shrink)."""

    def __init__(self, data):
        self._data = data

    def int(self, low, high):
        return self._data.draw(st.integers(low, high))


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Invalid APNG", as in production: not an error
def test_mutated_images_end_in_a_result_within_target_or_a_service_error(fmt):
    outcomes = []

    @settings(max_examples=CASES_PER_FORMAT, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        image, output, target = fuzz.make_case(DrawSource(data), pool(fmt), fmt)
        outcomes.append(fuzz.run_case(image, output, target))

    case()
    # The mutations must reach the decoders and the encoders, not only the sniffer.
    assert outcomes.count("compressed") >= CASES_PER_FORMAT // 50, outcomes.count("compressed")


def test_the_seeds_themselves_compress():
    for fmt, seeds in pool("heic").items():
        for data in seeds:
            if fmt == "avif" and data in [path.read_bytes() for path in fuzz.DATA.glob("*.avif")]:
                assert fuzz.run_case(data, "original", None) == "refused"
            else:
                assert fuzz.run_case(data, "webp", 2000) == "compressed", fmt


def test_the_harness_finds_finding_9s_avif_errors_when_that_fix_is_undone(monkeypatch):
    # Before the fix, Pillow's RuntimeError and ZeroDivisionError escaped decode.py as 500s.
    decode = importlib.import_module("imgsmaller.engine.decode")
    real = decode._corrupt

    def before_the_fix(fmt, what, error):
        if isinstance(error, (RuntimeError, ArithmeticError)):
            raise error
        return real(fmt, what, error)

    monkeypatch.setattr(decode, "_corrupt", before_the_fix)
    pillow_seeds = {**SEEDS, "avif": fuzz.make_seeds(reproducers=False, heic=False)["avif"]}
    escaped = 0
    for index in range(400):
        try:
            fuzz.run_case(*fuzz.make_case(fuzz.RandomSource(index), pillow_seeds, "avif"))
        except (RuntimeError, ArithmeticError):
            escaped += 1
    assert escaped >= 1
