"""The shared throttles on a real SQLite file and on PostgreSQL, with a fake clock: windows, backoff, races, pruning.

The pages that use them: test_dashboard.py; across real server processes: test_serve.py.
"""

import sqlite3
import threading

import pytest

from imgsmaller import db as database
from imgsmaller.throttle import Throttle, client_key, email_key

from helpers import own_connection, run_in_threads

ATTACKER, VICTIM = "203.0.113.5", "198.51.100.7"
pytestmark = pytest.mark.engines


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def path(tmp_path, database_url):
    """The database: a SQLite file, or the URL of a fresh PostgreSQL schema."""
    path = database_url or str(tmp_path / "throttle.sqlite3")
    database.init_db(path)
    return path


@pytest.fixture
def db(path):
    connection = database.connect(path)
    yield connection
    connection.close()


@pytest.fixture
def clock():
    return Clock()


def make_throttle(clock, *, per_email_address=3, per_address=30, per_email=100, window=600,
                  signup_per_address=5, signup_server=100):
    return Throttle(login_max_failures=per_email_address, login_max_failures_per_address=per_address,
                    login_max_failures_per_email=per_email, login_window_s=window,
                    signup_max_per_address_per_hour=signup_per_address, signup_max_per_hour=signup_server, clock=clock)


def fail(throttle, db, email="ada@example.org", address=ATTACKER):
    """One wrong password: returns the seconds to wait (0: the attempt was let through and counted)."""
    return throttle.begin_login(db, email, address).retry_after


def rows(db, bucket_prefix=""):
    return db.execute("SELECT count(*) FROM throttle_events WHERE bucket LIKE ?", (bucket_prefix + "%",)).fetchone()[0]


def test_an_email_from_one_address_is_refused_after_max_failures_until_the_oldest_expires(db, clock):
    throttle = make_throttle(clock)
    assert [fail(throttle, db) for _ in range(3)] == [0, 0, 0]
    assert fail(throttle, db) == 600
    clock.now += 300
    assert fail(throttle, db) == 300
    clock.now += 300
    assert fail(throttle, db) == 0


def test_the_window_slides_so_old_failures_stop_counting(db, clock):
    throttle = make_throttle(clock)
    fail(throttle, db)
    clock.now += 500
    fail(throttle, db)
    fail(throttle, db)
    assert fail(throttle, db) == 100  # until the first failure is 600 s old
    clock.now += 100
    assert fail(throttle, db) == 0
    assert fail(throttle, db) == 500


def test_refused_attempts_do_not_count(db, clock):
    throttle = make_throttle(clock)
    for _ in range(3):
        fail(throttle, db)
    for _ in range(20):
        assert fail(throttle, db) == 600
    assert rows(db, "login-email-address:") == 3


def test_guessing_from_one_address_never_locks_the_owner_out_from_another(db, clock):
    throttle = make_throttle(clock)
    for _ in range(3):
        fail(throttle, db, address=ATTACKER)
    assert fail(throttle, db, address=ATTACKER) > 0
    attempt = throttle.begin_login(db, "ADA@example.org ", VICTIM)  # emails compare case-blind
    assert attempt.retry_after == 0


def test_one_address_trying_many_emails_is_refused_at_the_address_limit(db, clock):
    throttle = make_throttle(clock, per_address=5)
    assert [fail(throttle, db, f"guess{n}@example.org") for n in range(5)] == [0] * 5
    assert fail(throttle, db, "another@example.org") == 600
    assert fail(throttle, db, "another@example.org", address=VICTIM) == 0


def test_an_email_guessed_from_many_addresses_backs_off_instead_of_locking(db, clock):
    throttle = make_throttle(clock, per_email=5)
    addresses = iter(f"192.0.2.{n}" for n in range(1, 200))
    assert [fail(throttle, db, address=next(addresses)) for _ in range(5)] == [0] * 5
    waits = []
    for _ in range(9):  # 511 s in all: no failure has expired yet
        wait = fail(throttle, db, address=next(addresses))
        waits.append(wait)
        clock.now += wait
        assert fail(throttle, db, address=next(addresses)) == 0  # after the wait, one more try
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_the_backoff_never_exceeds_the_window(db, clock):
    throttle = make_throttle(clock, per_email=5)
    db.executemany("INSERT INTO throttle_events (bucket, at, expires_at) VALUES (?, ?, ?)",
                   [("login-email:ada@example.org", clock.now, clock.now + 600)] * 40)
    assert fail(throttle, db, address=VICTIM) == 600


def test_a_right_password_takes_its_attempt_back_and_forgives_that_email_from_that_address(db, clock):
    throttle = make_throttle(clock, per_address=4)
    fail(throttle, db)
    fail(throttle, db)
    throttle.begin_login(db, "ada@example.org", ATTACKER).succeeded()
    assert rows(db, "login-email-address:") == 0
    assert rows(db, "login-email:") == 2 and rows(db, "login-address:") == 2  # the others still count
    assert [fail(throttle, db) for _ in range(3)] == [0, 0, 600]  # the address limit (4) is reached


def test_a_right_password_is_refused_while_throttled(db, clock):
    throttle = make_throttle(clock)
    for _ in range(3):
        fail(throttle, db)
    attempt = throttle.begin_login(db, "ada@example.org", ATTACKER)
    assert attempt.retry_after == 600 and attempt.message == "Too many failed log-ins. Try again in about 10 minutes."


def test_sixty_simultaneous_wrong_passwords_count_once_each_and_only_the_limit_passes(path, clock):
    """Each thread has its own connection, so the database lock is all that orders them (as across processes)."""
    throttle = make_throttle(clock, per_email_address=10)
    barrier = threading.Barrier(60)
    waits = []

    def guess():
        connection = own_connection(path)
        try:
            barrier.wait()
            waits.append(fail(throttle, connection))
        finally:
            connection.close()

    run_in_threads(guess, 60, timeout=None)
    assert waits.count(0) == 10 and len(waits) == 60
    connection = database.connect(path)
    assert rows(connection, "login-email-address:") == 10
    connection.close()


def test_sign_up_counts_every_attempt_per_address_and_only_new_accounts_server_wide(db, clock):
    throttle = make_throttle(clock, signup_per_address=3, signup_server=4)
    throttle.begin_signup(db, ATTACKER)  # an account made
    for _ in range(2):
        throttle.begin_signup(db, ATTACKER).failed()  # "already exists": tells something, so it counts
    refused = throttle.begin_signup(db, ATTACKER)
    assert refused.retry_after == 3600 and refused.message.startswith("Too many sign-ups.")
    assert rows(db, "signup-server:") == 1
    for number in range(3):
        assert throttle.begin_signup(db, f"192.0.2.{number}").retry_after == 0
    assert throttle.begin_signup(db, VICTIM).retry_after == 3600  # 4 new accounts this hour: the ceiling
    clock.now += 3600
    assert throttle.begin_signup(db, VICTIM).retry_after == 0


def test_expired_rows_are_deleted_so_the_table_stays_bounded(db, clock):
    throttle = make_throttle(clock)
    for number in range(500):
        fail(throttle, db, f"user{number}@example.org", f"10.0.{number // 250}.{number % 250}")
    assert rows(db) == 1500
    clock.now += 600
    fail(throttle, db)
    assert rows(db) == 3


@pytest.mark.parametrize("address, key", [
    ("203.0.113.5", "203.0.113.5"),
    ("::ffff:203.0.113.5", "203.0.113.5"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
    ("", "unknown"), (None, "unknown"), ("not an address\n", "unknown"),
])
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(address, key):
    assert client_key(address) == key


def test_a_huge_email_is_counted_under_a_short_hash():
    key = email_key("a" * 1_000_000 + "@example.org")
    assert key.startswith("sha256:") and len(key) < 80
    assert email_key(" Ada@Example.org ") == "ada@example.org"


def test_a_version_1_database_gets_the_throttle_table_on_start(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    database.init_db(path)
    connection = sqlite3.connect(path)
    connection.executescript("DROP TABLE throttle_events; ALTER TABLE jobs DROP COLUMN lease_expires_at;"
                             " PRAGMA user_version = 1;")
    connection.close()
    database.init_db(path)
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION >= 2
        assert connection.execute("SELECT count(*) FROM throttle_events").fetchone()[0] == 0
    finally:
        connection.close()
