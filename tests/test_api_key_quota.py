"""A keyed API request reads its account and today's usage in one statement (auth.authenticate_with_quota):
nothing is cached, so every change to a key, an account, a limit or the usage counts from the next request."""

import pytest

from imgsmaller import accounts
from imgsmaller.db import connect, database_of, transaction, utcnow
from imgsmaller.quota import utc_day

from helpers import assert_error

pytestmark = pytest.mark.engines


def info(client, key):
    return client.get("/api/v1/info", headers={"X-API-Key": key})


@pytest.fixture
def db(app):
    connection = connect(database_of(app.config))
    yield connection
    connection.close()


def test_a_rotated_key_is_refused_from_the_next_request(client, db, user):
    assert info(client, user["key"]).status_code == 200
    new_key = accounts.rotate_api_key(db, user["id"])
    assert assert_error(info(client, user["key"]), 401) == "Invalid API key."
    assert info(client, new_key).status_code == 200


def test_a_deleted_account_is_refused_from_the_next_request(client, db, user):
    assert info(client, user["key"]).status_code == 200
    with transaction(db):
        db.execute("DELETE FROM users WHERE id = ?", (user["id"],))
    assert_error(info(client, user["key"]), 401)


def test_a_changed_limit_and_new_usage_show_on_the_next_request(client, db, make_user):
    user = make_user(daily_limit=5)
    assert info(client, user["key"]).get_json()["remaining_today"] == 5
    accounts.set_daily_limit(db, user["id"], 3)
    with transaction(db):
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, ?, 2)", (user["id"], utc_day(utcnow())))
    response = info(client, user["key"])
    assert response.get_json()["limit"] == 3 and response.get_json()["remaining_today"] == 1
    assert response.headers["X-RateLimit-Limit"] == "3" and response.headers["X-RateLimit-Remaining"] == "1"
    accounts.set_daily_limit(db, user["id"], None)  # back to the server's default
    assert info(client, user["key"]).get_json()["limit"] == client.application.config["DAILY_LIMIT"]


def test_another_days_usage_and_another_accounts_do_not_count(client, db, make_user):
    user, other = make_user(daily_limit=5), make_user(daily_limit=5)
    with transaction(db):
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, '2000-01-01', 4)", (user["id"],))
        db.execute("INSERT INTO usage (user_id, day, count) VALUES (?, ?, 4)", (other["id"], utc_day(utcnow())))
    assert info(client, user["key"]).get_json()["remaining_today"] == 5


@pytest.mark.parametrize(("key", "message"), [
    ("", "Missing API key: send it in the X-API-Key header or the api_key query parameter."),
    ("   ", "Invalid API key."),
    ("nonsense", "Invalid API key."),
    ("isk_" + "0" * 64, "Invalid API key."),
])
def test_bad_keys_are_refused_with_the_same_words_as_before(client, key, message):
    assert assert_error(info(client, key), 401) == message


def test_a_key_with_spaces_around_it_is_still_accepted(client, user):
    assert info(client, f"  {user['key']} ").status_code == 200
