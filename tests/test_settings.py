"""Settings: defaults, config file, environment winning, validation naming the setting, README docs."""

import os

import pytest

from imgsmaller import create_app
from imgsmaller.settings import SettingsError, load_settings


def test_defaults_follow_api_md(tmp_path):
    values = load_settings(str(tmp_path), {}, {})
    assert values["DAILY_LIMIT"] == 100
    assert values["UPLOAD_MAX_MB"] == 10
    assert values["MAX_PIXELS"] == 50_000_000
    assert values["RESULT_TTL_HOURS"] == 24
    assert values["WORKERS"] == (os.cpu_count() or 1)
    assert values["DATABASE"] == str(tmp_path / "imgsmaller.sqlite3")
    assert values["FETCH_ALLOW_PRIVATE"] is False


def test_secret_key_is_generated_once_into_the_instance_folder(tmp_path):
    first = load_settings(str(tmp_path), {}, {})["SECRET_KEY"]
    second = load_settings(str(tmp_path), {}, {})["SECRET_KEY"]
    assert first == second and len(first) >= 64
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_environment_wins_over_config_file_and_parses_json(tmp_path):
    values = load_settings(str(tmp_path), {"DAILY_LIMIT": 5, "PUBLIC_URL": "http://a.test"},
                           {"IMGSMALLER_DAILY_LIMIT": "7", "IMGSMALLER_FETCH_ALLOW_PRIVATE": "true"})
    assert values["DAILY_LIMIT"] == 7
    assert values["PUBLIC_URL"] == "http://a.test"
    assert values["FETCH_ALLOW_PRIVATE"] is True


@pytest.mark.parametrize("name, value", [
    ("DAILY_LIMIT", "-1"), ("DAILY_LIMIT", "lots"), ("UPLOAD_MAX_MB", "0"), ("WORKERS", "-1"),
    ("MAX_PIXELS", "1.5"), ("PUBLIC_URL", "img.example.com"), ("FETCH_ALLOW_PRIVATE", "maybe"),
    ("RESULT_TTL_HOURS", "nan"),
])
def test_bad_values_stop_start_up_naming_the_setting(tmp_path, name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(str(tmp_path), {}, {"IMGSMALLER_" + name: value})


def test_create_app_rejects_a_bad_setting(tmp_path):
    with pytest.raises(SettingsError, match="WORKERS"):
        create_app({"DATABASE": str(tmp_path / "db"), "SECRET_KEY": "x", "WORKERS": -1})


@pytest.mark.parametrize("environ, config_file, expected", [
    ({"IMGSMALLER_DAILY_LIMT": "5"}, {}, "IMGSMALLER_DAILY_LIMT: did you mean DAILY_LIMIT?"),
    ({}, {"UPLOAD_MAX_MBS": 3}, "UPLOAD_MAX_MBS in instance/config.py: did you mean UPLOAD_MAX_MB?"),
    ({"IMGSMALLER_COMPLETELY_DIFFERENT": "1"}, {}, "see the README's settings table"),
])
def test_an_unknown_setting_name_stops_start_up_naming_the_closest_one(tmp_path, environ, config_file, expected):
    with pytest.raises(SettingsError) as raised:
        load_settings(str(tmp_path), config_file, environ)
    assert expected in str(raised.value)


def test_the_clients_and_the_test_suites_variables_are_not_settings(tmp_path):
    environ = {"IMGSMALLER_API_KEY": "isk_x", "IMGSMALLER_URL": "http://a.test",
               "IMGSMALLER_TEST_DATABASE_URL": "postgresql://127.0.0.1/test"}
    assert load_settings(str(tmp_path), {}, environ)["DAILY_LIMIT"] == 100


@pytest.mark.parametrize("name, value, words", [
    ("DAILY_LIMIT", "lots", "must be a whole number"),
    ("MAX_PIXELS", "1.5", "must be a whole number"),
    ("UPLOAD_MAX_MB", "ten", "must be a number greater than 0"),
    ("UPLOAD_MAX_MB", "[1]", "must be a number greater than 0"),
])
def test_a_bad_value_is_explained_in_words(tmp_path, name, value, words):
    with pytest.raises(SettingsError) as raised:
        load_settings(str(tmp_path), {}, {"IMGSMALLER_" + name: value})
    message = str(raised.value)
    assert words in message and "invalid literal" not in message and "could not convert" not in message
