"""The flask commands outside scripts drive: exact names, key on the last line, one-line mistakes."""

import re

from werkzeug.security import check_password_hash

from imgsmaller.accounts import get_user_by_api_key, get_user_by_email
from imgsmaller.db import connect, init_db


def last_line(output):
    return output.strip().splitlines()[-1]


def test_create_user_prints_the_key_alone_on_the_last_line(app, cli, db):
    result = cli.invoke(args=["create-user", "ann@example.org", "--password", "pw-123456",
                              "--allowed-domain", "Example.COM.", "--daily-limit", "7"])
    assert result.exit_code == 0, result.output
    key = last_line(result.output)
    assert key.startswith("isk_") and len(key) == 4 + 64
    user = get_user_by_api_key(db, key)
    assert user["email"] == "ann@example.org"
    assert user["allowed_domain"] == "example.com"
    assert user["daily_limit"] == 7
    assert user["password_hash"].startswith("scrypt:")
    assert key not in str(dict(user))  # only the hash is stored


def test_create_user_refuses_a_duplicate_email_with_one_line(cli):
    assert cli.invoke(args=["create-user", "bob@example.org"]).exit_code == 0
    result = cli.invoke(args=["create-user", "BOB@example.org"])
    assert result.exit_code != 0
    assert "already exists" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_create_user_refuses_a_malformed_email(cli):
    result = cli.invoke(args=["create-user", "not-an-email"])
    assert result.exit_code != 0 and "email" in result.output.lower()


def test_rotate_key_makes_the_old_key_fail_at_once(cli, db, make_user):
    user = make_user(email="cy@example.org")
    result = cli.invoke(args=["rotate-key", "cy@example.org"])
    assert result.exit_code == 0, result.output
    new_key = last_line(result.output)
    assert new_key != user["key"]
    assert get_user_by_api_key(db, user["key"]) is None
    assert get_user_by_api_key(db, new_key)["id"] == user["id"]


def test_rotate_key_of_an_unknown_email_fails(cli):
    result = cli.invoke(args=["rotate-key", "nobody@example.org"])
    assert result.exit_code != 0 and "No account" in result.output


def test_set_domain_and_clear(cli, db, make_user):
    make_user(email="di@example.org")
    assert cli.invoke(args=["set-domain", "di@example.org", "img.Example.org"]).exit_code == 0
    assert get_user_by_email(db, "di@example.org")["allowed_domain"] == "img.example.org"
    assert cli.invoke(args=["set-domain", "di@example.org", "--clear"]).exit_code == 0
    assert get_user_by_email(db, "di@example.org")["allowed_domain"] is None


def test_set_domain_refuses_malformed_and_internal_domains(cli, db, make_user):
    make_user(email="ed@example.org")
    for bad in ["localhost", "127.0.0.1", "intranet", "http://example.com/x", "printer.local"]:
        result = cli.invoke(args=["set-domain", "ed@example.org", bad])
        assert result.exit_code != 0, bad
        assert len(result.output.strip().splitlines()) == 1
    assert get_user_by_email(db, "ed@example.org")["allowed_domain"] is None


def test_set_limit(cli, db, make_user):
    make_user(email="fa@example.org")
    assert cli.invoke(args=["set-limit", "fa@example.org", "3"]).exit_code == 0
    assert get_user_by_email(db, "fa@example.org")["daily_limit"] == 3
    assert cli.invoke(args=["set-limit", "fa@example.org", "-1"]).exit_code != 0


def test_init_db_keeps_existing_data(app, cli, make_user):
    make_user(email="gi@example.org")
    result = cli.invoke(args=["init-db"])
    assert result.exit_code == 0
    init_db(app.config["DATABASE"])
    db = connect(app.config["DATABASE"])
    assert get_user_by_email(db, "gi@example.org") is not None
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
    db.close()


def test_set_password_asks_twice_hidden_and_lets_the_account_log_in(app, cli, db, make_user):
    make_user(email="dee@example.org")  # an API-only account: no password yet
    result = cli.invoke(args=["set-password", "dee@example.org"], input="new pass 1234\nnew pass 1234\n")
    assert result.exit_code == 0, result.output
    assert "new pass 1234" not in result.output  # hidden input is not echoed
    assert "New password: " in result.output and "Repeat for confirmation: " in result.output
    assert check_password_hash(get_user_by_email(db, "dee@example.org")["password_hash"], "new pass 1234")
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    response = client.post("/login", data={"email": "dee@example.org", "password": "new pass 1234",
                                           "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"


def test_set_password_refuses_two_different_answers_and_short_passwords(cli, db, make_user):
    make_user(email="eve@example.org")
    different = cli.invoke(args=["set-password", "eve@example.org"], input="first pass 1\nother pass 2\n"
                                                                            "first pass 1\nfirst pass 1\n")
    assert "do not match" in different.output and different.exit_code == 0  # asked again, then set
    short = cli.invoke(args=["set-password", "eve@example.org", "--password", "short"])
    assert short.exit_code != 0 and "at least 8 characters" in short.output
    assert check_password_hash(get_user_by_email(db, "eve@example.org")["password_hash"], "first pass 1")


def test_set_password_for_scripts_and_of_an_unknown_email(cli, db, make_user):
    make_user(email="fay@example.org")
    assert cli.invoke(args=["set-password", "fay@example.org", "--password", "scripted 123"]).exit_code == 0
    assert check_password_hash(get_user_by_email(db, "fay@example.org")["password_hash"], "scripted 123")
    unknown = cli.invoke(args=["set-password", "nobody@example.org", "--password", "scripted 123"])
    assert unknown.exit_code != 0 and "No account" in unknown.output


def test_set_password_logs_out_the_accounts_sessions(cli, db, make_user):
    user = make_user(email="gus@example.org", password="old password")
    version = get_user_by_email(db, "gus@example.org")["session_version"]
    cli.invoke(args=["set-password", user["email"], "--password", "brand new one"])
    assert get_user_by_email(db, "gus@example.org")["session_version"] == version + 1


def test_create_user_with_a_bare_password_option_asks_for_it(cli, db):
    result = cli.invoke(args=["create-user", "hal@example.org", "--password", "--daily-limit", "3"],
                        input="typed secret 9\ntyped secret 9\n")
    assert result.exit_code == 0, result.output
    assert "typed secret 9" not in result.output and last_line(result.output).startswith("isk_")
    user = get_user_by_email(db, "hal@example.org")
    assert check_password_hash(user["password_hash"], "typed secret 9") and user["daily_limit"] == 3
    last = cli.invoke(args=["create-user", "ida@example.org", "--password"], input="typed secret 8\ntyped secret 8\n")
    assert last.exit_code == 0 and check_password_hash(get_user_by_email(db, "ida@example.org")["password_hash"],
                                                       "typed secret 8")
    api_only = cli.invoke(args=["create-user", "jo@example.org"], input="")
    assert api_only.exit_code == 0 and get_user_by_email(db, "jo@example.org")["password_hash"] is None
