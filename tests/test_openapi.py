"""The OpenAPI document (imgsmaller/openapi.json): it validates, it is served, and schemathesis finds the app keeps it."""

import json
import os
import re

import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from imgsmaller import accounts
from imgsmaller.api import OPENAPI_PATH

# Bounded so the whole run stays within seconds: a fixed seed (reproducible in CI) and a
# few examples per operation and phase. `python bench/openapi_fuzz.py` runs the same test
# with many more examples and other seeds, through these two variables.
MAX_EXAMPLES = int(os.environ.get("IMGSMALLER_TEST_OPENAPI_EXAMPLES", "12"))
SEED = int(os.environ.get("IMGSMALLER_TEST_OPENAPI_SEED", "20261201"))


def test_the_document_is_valid_openapi_3_1():
    document = json.loads(OPENAPI_PATH.read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_document_is_served_without_a_key_naming_this_server(client):
    response = client.get("/api/v1/openapi.json", base_url="https://img.example.com")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document.pop("servers") == [{"url": "https://img.example.com", "description": "This server"}]
    assert document == json.loads(OPENAPI_PATH.read_text())


def test_every_route_of_the_api_and_the_probes_is_documented(app):
    documented = {(path, method.upper()) for path, item in json.loads(OPENAPI_PATH.read_text())["paths"].items()
                  for method in item}
    routes = {(re.sub(r"<(?:int:)?([a-z_]+)>", r"{\1}", rule.rule), method)
              for rule in app.url_map.iter_rules() if rule.endpoint.split(".")[0] in ("api", "ops")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


def test_the_docs_page_links_to_the_document(client):
    assert 'href="/api/v1/openapi.json"' in client.get("/docs").get_data(as_text=True)


# Every check schemathesis has runs on every operation, with this one exception:
# "schema-valid data is accepted" cannot hold for compress, because a body that fits any
# JSON Schema can still hold bytes that are not a decodable image (415, 422), too many
# pixels (422) or too many bytes (413). Its negative side (invalid data is refused) runs.
EXCLUDED_CHECKS = {"/api/v1/compress": [positive_data_acceptance]}


class CurrentApp:
    """A WSGI app that forwards to the app of the running test (schemathesis binds its transport at import)."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


CURRENT_APP = CurrentApp()
schema = schemathesis.openapi.from_path(OPENAPI_PATH)  # the file itself; the served copy is tested below
schema.app = CURRENT_APP
schema.config.generation.update(modes=list(GenerationMode))  # positive and negative cases
# Schemathesis builds some cases while collecting, before any app exists: the run's
# account therefore gets a key fixed in advance (each test's app has its own database).
KEY = "isk_" + "5c" * 32


@schema.auth()
class ApiKey:
    def get(self, case, context):
        return KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "X-API-Key": data}


@pytest.fixture
def served(app, make_user, monkeypatch):
    """The schema pointed at this test's app (in-process WSGI), with the run's account in its database."""
    monkeypatch.setattr(accounts, "new_api_key", lambda: KEY)
    assert make_user(daily_limit=100_000)["key"] == KEY
    CURRENT_APP.app = app
    yield app
    CURRENT_APP.app = None


@schema.parametrize()
@hypothesis.seed(SEED)
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_the_app_keeps_its_openapi_document(case, served):
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS.get(case.operation.path, []))
