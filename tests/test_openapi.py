"""openapi.json: a valid OpenAPI document of every route, true to what the app answers.

Schemathesis generates requests from the document (valid ones and invalid
ones) and sends them to the app with a real key; every answer must be a
documented status code, with the documented content type, headers and body,
and never a 5xx.
"""
import gzip
import json
import os
import pathlib
import re
import zlib

import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, ignored_auth,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

import logflow
from helpers import drain_all, post_logs

DOCUMENT = pathlib.Path(logflow.OPENAPI_PATH)
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance,
          # A request that got a 2xx is sent again without the key and with a wrong one: both refused.
          ignored_auth]

# CI replays the same examples on every run; elsewhere each run explores anew.
hypothesis.settings.register_profile("logflow-ci", derandomize=True, database=None, print_blob=True)
PROFILE = hypothesis.settings.get_profile("logflow-ci" if os.environ.get("CI") else "default")

# The document does not depend on the backend.
sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


@sqlite_only
def test_the_served_document_is_the_file_and_valid_openapi(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.json
    assert document == json.loads(DOCUMENT.read_text())
    validate_openapi(document)  # the OpenAPI 3.1 meta-schema, and every $ref resolves
    schemathesis.openapi.from_dict(document).validate()  # and as Schemathesis reads it


@sqlite_only
def test_every_route_is_documented_and_every_documented_route_exists(app, client):
    served = set()
    for rule in app.url_map.iter_rules():
        # The viewer's pages under /ui/, and / that leads there, are for people, not the API.
        if rule.endpoint == "static" or rule.endpoint == "logs.home" or rule.endpoint.startswith("viewer."):
            continue
        # Flask's /logs/<int:id> is OpenAPI's /logs/{id}; HEAD and OPTIONS come with every GET.
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        served |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in client.get("/openapi.json").json["paths"].items()
                  for method in item if method in HTTP_METHODS}
    assert served - documented == set(), "routes missing from openapi.json"
    assert documented - served == set(), "openapi.json documents routes the app does not have"


def test_every_status_the_ingest_code_raises_is_documented():
    # Schemathesis cannot make the queue fail or a project go over its rate
    # limit; the statuses the code names must be in the document all the same.
    source = pathlib.Path(logflow.__file__).read_text()
    raised = {int(status) for status in re.findall(r"APIError\(\s*(\d{3})", source)}
    paths = json.loads(DOCUMENT.read_text())["paths"]
    # The read routes raise 404, which ingestion never does.
    documented = {int(status) for item in paths.values() for operation in item.values()
                  for status in operation["responses"]}
    assert raised - documented == set()
    assert {202, 400, 401, 403, 408, 413, 415, 422, 429, 503} <= {
        int(status) for status in paths["/logs"]["post"]["responses"]}


def _encode(ctx, data):
    """The body compressed as the generated Content-Encoding header says, as a client would."""
    encoding = str((ctx.case.headers or {}).get("Content-Encoding", "")).strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


def _json(value):
    return value if isinstance(value, bytes) else json.dumps(value).encode()


@schemathesis.serializer("application/json")
def json_body(ctx, value):
    return _encode(ctx, _json(value))


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx, value):
    # The document describes NDJSON as an array of records, one per line.
    lines = value if isinstance(value, list) else [value]
    return _encode(ctx, b"".join(_json(line) + b"\n" for line in lines))


@pytest.fixture
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


api = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def some_logs(client, key):
    """A few stored logs, so that the read routes answer with some."""
    post_logs(client, key, [{"message": "m%d" % n, "level": n, "metadata": {"n": n}} for n in range(8)])
    drain_all()


@api.parametrize()
@hypothesis.settings(PROFILE, max_examples=100, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_the_app_answers_as_documented(case, key, read_key, some_logs):
    # Reading (saved searches included) needs a key with scope read, sending one with scope ingest.
    reads = case.method == "GET" or case.path.startswith("/searches")
    case.call_and_validate(headers={"X-API-Key": read_key if reads else key}, checks=CHECKS)
