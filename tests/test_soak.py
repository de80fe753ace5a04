"""A one-minute soak of a real waitress server (bench/soak.py; the 10-minute table is in bench/RESULTS.md).

Compress of every format, info, result polls, downloads, bad inputs and a slow client
against `flask --app app serve` on loopback: no 5xx, no connection error, and after
warm-up the process's threads, open files and memory stay within a band (8 threads,
16 files, 40 MB): a catch for gross leaks only; the 10-minute run is the real check.
"""

import pytest

from bench import soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_minute_of_mixed_load_leaves_no_5xx_and_flat_resources():
    samples, load = soak.run(minutes=1, clients=2, slow_clients=1, sample_s=5)
    assert soak.server_errors(load) == 0 and not load.errors, (load.statuses, load.errors)
    answered = {what for (what, status) in load.statuses if isinstance(status, int) and status < 500}
    assert {"compress", "result", "download", "info", "bad"} <= answered, load.statuses
    after = [sample for _, sample in samples[len(samples) // 4:]]
    for name, band in (("threads", 8), ("fds", 16), ("rss_mb", 40)):
        values = [sample[name] for sample in after]
        assert max(values) - min(values) <= band, (name, values)
