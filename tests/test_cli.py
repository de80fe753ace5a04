"""The flask commands outside scripts drive: exact names, key on the last line, one-line mistakes."""

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
