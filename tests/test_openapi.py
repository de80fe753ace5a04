"""The OpenAPI document (imgsmaller/openapi.json): it validates, it is served, and the app keeps it (schemathesis)."""

import base64
import io
import json
import os
import re

import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from imgsmaller import accounts, engine
from imgsmaller.api import OPENAPI_PATH
from imgsmaller.errors import TargetUnreachableError

from images import image_bytes

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


# -- the answers fuzzing seldom reaches (a real image, a done job, the quota used up) ---------


def assert_conforms(path, method, response):
    """The status is documented for the operation, its required headers are there, the body fits its schema."""
    operation = schema[path][method]
    document = json.loads(OPENAPI_PATH.read_text())
    declared = document["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in declared, (path, response.status_code)
    answer = declared[str(response.status_code)]
    if "$ref" in answer:
        answer = document["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    for name, header in answer.get("headers", {}).items():
        header = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]] if "$ref" in header else header
        if header.get("required"):
            assert name in response.headers, (path, response.status_code, name)
    operation.validate_response(response)


def unreachable(*args, **kwargs):
    raise TargetUnreachableError()


def test_real_answers_of_every_kind_conform_to_the_document(app, client, make_user, monkeypatch):
    key = make_user(daily_limit=3)["key"]
    headers = {"X-API-Key": key}
    assert_conforms("/api/v1/info", "GET", client.get("/api/v1/info", headers=headers))
    queued = client.post("/api/v1/compress", headers=headers, data={"file": (io.BytesIO(image_bytes()), "a.png")})
    assert queued.status_code == 202
    assert_conforms("/api/v1/compress", "POST", queued)
    jpeg = base64.b64encode(image_bytes("jpeg")).decode()
    done = client.post("/api/v1/compress", headers=headers, json={"file_base64": jpeg, "output": "webp", "wait": 5})
    assert done.status_code == 200 and done.get_json()["status"] == "done"
    assert_conforms("/api/v1/compress", "POST", done)
    result = client.get(f"/result/{done.get_json()['progress_key']}")
    assert_conforms("/result/{progress_key}", "GET", result)
    download = client.get(result.get_json()["download"])
    assert download.status_code == 200 and download.mimetype == "image/webp"
    assert_conforms("/download/{image_id}", "GET", download)
    assert_conforms("/download/{image_id}", "GET", client.get(f"/download/{result.get_json()['image_id']}",
                                                              headers=headers))

    monkeypatch.setattr(engine, "compress", unreachable)
    failed = client.post("/api/v1/compress", headers=headers,
                         data={"file": (io.BytesIO(image_bytes()), "a.png"), "wait": "5"})
    assert failed.status_code == 200 and failed.get_json()["status"] == "failed"
    assert_conforms("/api/v1/compress", "POST", failed)
    assert_conforms("/result/{progress_key}", "GET", client.get(f"/result/{failed.get_json()['progress_key']}"))
    over = client.post("/api/v1/compress", headers=headers, data={"file": (io.BytesIO(image_bytes()), "a.png")})
    assert over.status_code == 429
    assert_conforms("/api/v1/compress", "POST", over)
    assert_conforms("/api/v1/info", "GET", client.get("/api/v1/info"))  # 401
