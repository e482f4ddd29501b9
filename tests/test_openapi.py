"""GET /openapi.json, GET /docs and docs/api.md: complete, valid, served offline, and unable to drift."""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, make_settings
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from schemathesis.specs.openapi.definitions import OPENAPI_31
from webtest import TestApp

from workflow import create_app
from workflow_service.openapi import ASSETS, OPERATIONS, STATIC_DIR, SWAGGER_UI_VERSION, doc_path, route_coverage
from workflow_service.validation import SCHEMA_DIR, load_schema, validator_for

API_KEY = "openapi-test-key-0123456789"
API_DOC = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def plain_app(tmp_path_factory):
    """An app whose document and pages are inspected; no request here touches the database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'unused.db'}"
    wsgi = create_app(make_settings(url))
    yield wsgi
    wsgi.db.close()


@pytest.fixture(scope="module")
def document(plain_app) -> dict:
    return TestApp(plain_app).get("/openapi.json").json


def operations(document: dict):
    """(path, method, operation) for every operation of the document."""
    for path, item in document["paths"].items():
        for method, op in item.items():
            yield path, method, op


def document_validator(document: dict, pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` inside the document (its `#/components` refs resolve)."""
    resource = Resource.from_contents(dict(document, **{"$schema": "https://json-schema.org/draft/2020-12/schema"}))
    registry = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=registry)


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def response_schema_pointer(path: str, method: str, status: int) -> str:
    return f"/paths/{escape(path)}/{method}/responses/{status}/content/{escape('application/json')}/schema"


# ---------------------------------------------------------------- completeness


def test_every_route_has_an_entry_and_every_entry_a_route(plain_app):
    undocumented, unrouted = route_coverage(plain_app)
    assert undocumented == [], f"routes without an OPERATIONS entry in workflow_service/openapi.py: {undocumented}"
    assert unrouted == [], f"OPERATIONS entries for routes the app does not have: {unrouted}"


def test_document_lists_exactly_the_routes(plain_app, document):
    from falcon import inspect

    routed = {(doc_path(r.path), m.method.lower()) for r in inspect.inspect_routes(plain_app)
              for m in r.methods if not m.internal}
    documented = {(path, method) for path, method, _ in operations(document)}
    assert documented == routed
    assert {"/openapi.json", "/docs", "/health", "/records/{id}"} <= set(document["paths"])


def test_every_route_of_spec_table_is_documented(document):
    for method, path in [("get", "/health"), ("get", "/version"), ("get", "/openapi.json"), ("get", "/docs"),
                         ("post", "/records"), ("post", "/records/batch"), ("get", "/records"),
                         ("get", "/records/{id}"), ("post", "/records/{id}/process"),
                         ("post", "/records/{id}/retry"), ("get", "/records/{id}/events"),
                         ("get", "/reports/summary"), ("get", "/reports/timeseries")]:
        assert method in document["paths"][path], f"{method.upper()} {path}"


# ---------------------------------------------------------------- validity


def test_document_is_valid_openapi_3_1(document):
    errors = sorted(Draft202012Validator(OPENAPI_31).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:10])
    assert document["openapi"] == "3.1.0"
    operation_ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(operation_ids) == len(set(operation_ids))


def test_every_schema_is_valid_json_schema_and_every_ref_resolves(document):
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    refs = re.findall(r'"\$ref": "(#[^"]*)"', json.dumps(document))
    assert refs
    for ref in set(refs):
        node = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
            node = node[part]


def test_request_schemas_are_the_files_not_copies(document):
    # Each component is its schemas/ file as loaded (only $id-relative refs rewritten to the document).
    components = document["components"]["schemas"]
    create = load_schema("record_create.json")
    assert components["RecordCreate"]["properties"] == create["properties"]
    assert components["RecordBatch"]["properties"]["records"]["items"] == {"$ref": "#/components/schemas/RecordCreate"}
    for path in SCHEMA_DIR.glob("**/*.json"):
        if "categories" in path.parts:
            continue
        assert json.loads(path.read_text())["title"] in components, path
    body = document["paths"]["/records"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RecordCreate"}
    batch = document["paths"]["/records/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch == {"$ref": "#/components/schemas/RecordBatch"}


def test_building_the_document_meta_checks_no_schema_again(monkeypatch):
    # The validators (compiled in gunicorn's master) checked every file; the document, built on the
    # first request to /openapi.json in a worker, must reuse them instead of running the meta-schema
    # check, whose compile code cost a worker 3.4 MiB of RSS.
    from workflow_service import openapi, validation

    validation.compile_validators()
    checks = []
    monkeypatch.setattr(validation.jsonschema_rs.meta, "validate", checks.append)
    openapi.component_schemas()
    assert checks == []
    assert load_schema("record_create.json", SCHEMA_DIR) is load_schema("record_create.json")


def test_response_schemas_reuse_the_request_schemas():
    record = load_schema("responses/record.json")
    assert record["properties"]["source"] == {"$ref": "../record_create.json#/properties/source"}
    for path in (SCHEMA_DIR / "responses").glob("*.json"):
        schema = load_schema(f"responses/{path.name}")
        Draft202012Validator.check_schema(schema)
        for example in schema.get("examples", []):
            errors = list(validator_for(f"responses/{path.name}").iter_errors(example))
            assert not errors, f"{path.name}: example does not validate: {errors[0].message}"


# ---------------------------------------------------------------- parameters, bodies, responses


@pytest.mark.parametrize("query_schema", sorted({op.query for op in OPERATIONS.values() if op.query}))
def test_query_parameters_come_from_the_query_schemas(document, query_schema):
    if not (SCHEMA_DIR / query_schema).exists():
        pytest.skip(f"{query_schema} is not written yet")
    (method, route), = [(m, r) for (m, r), op in OPERATIONS.items() if op.query == query_schema]
    op = document["paths"][doc_path(route)][method.lower()]
    params = {p["name"]: p for p in op["parameters"] if p.get("in") == "query"}
    properties = load_schema(query_schema)["properties"]
    assert set(params) == set(properties)
    for name, prop in properties.items():
        schema = params[name]["schema"]
        for keyword in ("type", "enum", "minimum", "maximum", "minLength", "maxLength", "default", "format"):
            assert schema.get(keyword) == prop.get(keyword), f"{name}.{keyword}"
        assert params[name]["required"] is False
        if "x-clamp-maximum" in prop:
            assert f"clamped to {prop['x-clamp-maximum']}" in params[name]["description"]
        if "default" in prop:
            assert f"Default `{prop['default']}`" in params[name]["description"]


def test_limit_bounds_and_defaults_are_documented(document):
    params = {p["name"]: p for p in document["paths"]["/records"]["get"]["parameters"] if "name" in p}
    assert params["limit"]["schema"]["minimum"] == 1 and params["limit"]["schema"]["default"] == 50
    assert "clamped to 200" in params["limit"]["description"]
    assert params["sort_order"]["schema"]["enum"] == ["asc", "desc"]


def test_every_operation_documents_request_id_and_error_envelopes(document):
    for path, method, op in operations(document):
        refs = [p.get("$ref") for p in op["parameters"]]
        assert "#/components/parameters/X-Request-ID" in refs, f"{method} {path}"
        assert op["responses"], f"{method} {path}"
        for status, response in op["responses"].items():
            assert "X-Request-ID" in response["headers"], f"{method} {path} {status}"
            if int(status) >= 400 and not (path == "/health" and status == "503"):
                schema = response["content"]["application/json"]["schema"]
                assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}
                code = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["const"]
                assert code in load_schema("responses/error.json")["properties"]["error"]["properties"]["code"]["enum"]
        if "{id}" in path:
            assert "404" in op["responses"]
            assert any(p.get("name") == "id" and p["in"] == "path" and p["required"] for p in op["parameters"])


def test_writes_have_the_api_key_scheme_and_idempotency_key(document, plain_app):
    assert document["components"]["securitySchemes"]["ApiKeyAuth"] == {
        **document["components"]["securitySchemes"]["ApiKeyAuth"], "type": "apiKey", "in": "header",
        "name": "X-API-Key"}
    for path, method, op in operations(document):
        if method == "post":
            assert {"ApiKeyAuth": []} in op["security"], path
            assert "401" in op["responses"], path
        else:
            assert "security" not in op, path
    for path in ("/records", "/records/batch"):
        refs = [p.get("$ref") for p in document["paths"][path]["post"]["parameters"]]
        assert "#/components/parameters/Idempotency-Key" in refs
        assert "422" in document["paths"][path]["post"]["responses"]
    created = document["paths"]["/records"]["post"]["responses"]["201"]
    assert "Location" in created["headers"] and "GetRecord" in created["links"]


def test_security_is_required_when_an_api_key_is_set(tmp_path):
    wsgi = create_app(make_settings(f"sqlite:///{tmp_path / 'x.db'}", API_KEY=API_KEY))
    try:
        document = TestApp(wsgi).get("/openapi.json").json
    finally:
        wsgi.db.close()
    assert document["paths"]["/records"]["post"]["security"] == [{"ApiKeyAuth": []}]
    assert API_KEY not in json.dumps(document)


def test_examples_validate_against_their_schemas(document):
    for path, method, op in operations(document):
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            validator = document_validator(document, f"/components/schemas/{name}")
            assert body["examples"], f"{method} {path}: no request example"
            for example in body["examples"].values():
                assert not list(validator.iter_errors(example["value"])), f"{method} {path}"
        for status, response in op["responses"].items():
            content = response.get("content", {}).get("application/json")
            if content and "examples" in content:
                validator = document_validator(document, response_schema_pointer(path, method, int(status)))
                for example in content["examples"].values():
                    errors = list(validator.iter_errors(example["value"]))
                    assert not errors, f"{method} {path} {status}: {errors[0].message}"


# ---------------------------------------------------------------- mounted under a prefix


def mounted(app, prefix: str):
    """A minimal WSGI dispatcher: `app` answers under `prefix`, as an embedder would mount it."""

    def dispatch(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(prefix):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"outside the mount"]
        environ = dict(environ, SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + prefix, PATH_INFO=path[len(prefix):])
        return app(environ, start_response)

    return dispatch


def test_server_url_and_docs_page_follow_the_mount_prefix(plain_app):
    client = TestApp(mounted(plain_app, "/api/v1"))
    document = client.get("/api/v1/openapi.json").json
    assert document["servers"][0]["url"] == "/api/v1"
    page = client.get("/api/v1/docs").text
    assert 'data-spec-url="/api/v1/openapi.json"' in page
    for src in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert src.startswith("/api/v1/"), src
        assert client.get(src.split("?")[0]).status_int == 200
    assert TestApp(plain_app).get("/openapi.json").json["servers"][0]["url"] == "/"


# ---------------------------------------------------------------- the docs page and its assets


def test_docs_page_is_self_contained_with_strict_headers(plain_app):
    resp = TestApp(plain_app).get("/docs")
    assert resp.content_type == "text/html"
    csp = dict(part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in resp.headers["Content-Security-Policy"]
    assert "http" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    html = resp.text
    assert "http:" not in html and "https:" not in html and "//" not in html  # no external or protocol-relative URL
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert 'style="' not in html and "<style" not in html


def test_vendored_swagger_ui_is_the_recorded_version():
    bundle = (STATIC_DIR / "swagger-ui-bundle.js").read_text(encoding="utf-8")
    assert f'PACKAGE_VERSION:"{SWAGGER_UI_VERSION}"' in bundle
    assert "Apache License" in (STATIC_DIR / "LICENSE").read_text()


def test_docs_init_script_disables_the_external_validator():
    init = (STATIC_DIR / "docs-init.js").read_text()
    assert "validatorUrl: null" in init
    assert "http" not in init


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_assets_are_served_with_types_and_long_cache(plain_app, name):
    resp = TestApp(plain_app).get(f"/docs/assets/{name}")
    assert resp.headers["Content-Type"] == ASSETS[name][1]
    assert "max-age=31536000" in resp.headers["Cache-Control"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.body == (STATIC_DIR / ASSETS[name][0]).read_bytes()


@pytest.mark.parametrize("path", [
    "/docs/assets/nope.js", "/docs/assets/..%2Fopenapi.py", "/docs/assets/%2e%2e%2f%2e%2e%2fworkflow.py",
    "/docs/assets/swagger-ui-bundle.js.map", "/docs/assets/.%2E/.%2E/requirements.txt", "/docs/assets/%00",
])
def test_unknown_assets_are_404_in_the_envelope(plain_app, path):
    resp = TestApp(plain_app).get(path, expect_errors=True)
    assert resp.status_int == 404
    assert resp.json["error"]["code"] == "NOT_FOUND"
    assert b"import" not in resp.body


# ---------------------------------------------------------------- responses match the document, on both databases


def test_live_responses_match_the_document(make_app):
    app = make_app()
    document = app.get("/openapi.json").json

    def check(resp, path, method):
        assert str(resp.status_int) in document["paths"][path][method]["responses"], (method, path, resp.status)
        if resp.content_type == "application/json":
            validator = document_validator(document, response_schema_pointer(path, method, resp.status_int))
            errors = list(validator.iter_errors(resp.json))
            assert not errors, f"{method} {path} {resp.status}: {errors[0].message}"
        return resp

    body = {"source": "api", "category": "invoice", "payload": {"priority": 9}}
    record = check(app.post_json("/records", body), "/records", "post").json
    bad = check(app.post_json("/records", {"source": "x", "category": "y", "payload": {"priority": "high"}}),
                "/records", "post").json
    check(app.post_json("/records/batch", {"records": [body, body]}), "/records/batch", "post")
    check(app.post_json("/records", {"source": ""}, expect_errors=True), "/records", "post")
    check(app.post("/records", "{", content_type="application/json", expect_errors=True), "/records", "post")
    check(app.post("/records", "x", content_type="text/plain", expect_errors=True), "/records", "post")
    check(app.get("/records"), "/records", "get")
    check(app.get("/records?limit=1&sort_by=source&sort_order=asc"), "/records", "get")
    check(app.get("/records?limit=0", expect_errors=True), "/records", "get")
    check(app.get(f"/records/{record['id']}"), "/records/{id}", "get")
    check(app.get("/records/0b6f1c9e-8a8e-4a55-9d0e-6f3c1f1b2a77", expect_errors=True), "/records/{id}", "get")
    check(app.post(f"/records/{record['id']}/process"), "/records/{id}/process", "post")
    check(app.post(f"/records/{record['id']}/process", expect_errors=True), "/records/{id}/process", "post")
    check(app.post(f"/records/{bad['id']}/process"), "/records/{id}/process", "post")
    check(app.post(f"/records/{bad['id']}/retry"), "/records/{id}/retry", "post")
    check(app.post(f"/records/{bad['id']}/retry", expect_errors=True), "/records/{id}/retry", "post")
    check(app.get(f"/records/{bad['id']}/events"), "/records/{id}/events", "get")
    check(app.get("/reports/summary"), "/reports/summary", "get")
    check(app.get("/reports/summary?date_from=2026-02-01&date_to=2026-01-01", expect_errors=True),
          "/reports/summary", "get")
    check(app.get("/reports/timeseries?bucket=day"), "/reports/timeseries", "get")
    check(app.get("/health"), "/health", "get")
    check(app.get("/version"), "/version", "get")


def test_unauthorized_writes_match_the_document(make_app):
    app = make_app(API_KEY=API_KEY)
    document = app.get("/openapi.json").json
    resp = app.post_json("/records", {"source": "a", "category": "b", "payload": {}}, expect_errors=True)
    assert resp.status_int == 401 and "401" in document["paths"]["/records"]["post"]["responses"]
    validator = document_validator(document, response_schema_pointer("/records", "post", 401))
    assert not list(validator.iter_errors(resp.json))


# ---------------------------------------------------------------- docs/api.md


EXPECT_RE = re.compile(r"^<!-- expect: (\d{3}) -->$")
HEADING_RE = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/\S*)`$")


def api_examples() -> list[tuple[int, str, str, int, str]]:
    """(line, method, path, expected status, command) for every bash block of docs/api.md."""
    examples, heading, expect, block, start = [], None, None, None, 0
    for number, raw in enumerate(API_DOC.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if block is not None:
            if line == "```":
                assert expect is not None and heading, f"api.md:{start}: block without expect or heading"
                examples.append((start, *heading, expect, " ".join(block)))
                block, expect = None, None
            else:
                block.append(line.rstrip("\\").strip())
        elif line == "```bash":
            block, start = [], number
        elif EXPECT_RE.match(line):
            expect = int(EXPECT_RE.match(line).group(1))
        elif HEADING_RE.match(line):
            heading = HEADING_RE.match(line).groups()
    return examples


def test_api_guide_has_a_section_for_every_operation(document):
    text = API_DOC.read_text(encoding="utf-8")
    headings = {m.groups() for m in map(HEADING_RE.match, text.splitlines()) if m}
    documented = {(method.upper(), path) for path, method, _ in operations(document)}
    assert headings == documented, f"missing: {documented - headings}; unknown: {headings - documented}"
    covered = {(method, path) for _, method, path, _, _ in api_examples()}
    assert covered == documented, f"sections without an example: {documented - covered}"
    assert "swagger-ui-dist" in text and SWAGGER_UI_VERSION in text and "Apache" in text


def parse_curl(command: str) -> tuple[str, str, dict, str | None]:
    """(method, URL, headers, body) of one curl command."""
    words = shlex.split(command)
    assert words[0] == "curl", command
    method, url, headers, body, i = "GET", None, {}, None, 1
    while i < len(words):
        word = words[i]
        if word == "-X":
            method, i = words[i + 1], i + 2
        elif word == "-H":
            name, value = words[i + 1].split(":", 1)
            headers[name.strip()] = value.strip()
            i += 2
        elif word == "-d":
            body, i = words[i + 1], i + 2
        elif word in ("-s", "-i", "-sS"):
            i += 1
        else:
            assert url is None and word.startswith("http"), f"unexpected curl argument {word!r}"
            url, i = word, i + 1
    return method, url, headers, body


def test_every_api_guide_example_matches_the_document(make_app):
    app = make_app(API_KEY=API_KEY)
    document = app.get("/openapi.json").json
    key = {"X-API-Key": API_KEY}
    examples = api_examples()
    assert len(examples) >= len(list(operations(document)))
    for line, method, path, expected, command in examples:
        record = app.post_json("/records", {"source": "doc", "category": "invoice", "payload": {}}, headers=key).json
        failed = app.post_json("/records", {"source": "doc", "category": "x", "payload": {"priority": "high"}},
                               headers=key).json
        app.post(f"/records/{failed['id']}/process", headers=key)
        command = (command.replace("$FAILED_ID", failed["id"]).replace("$ID", record["id"])
                   .replace("$API_KEY", API_KEY))
        verb, url, headers, body = parse_curl(command)
        parts = urlsplit(url)
        assert parts.netloc == "localhost:8000", f"api.md:{line}"
        assert verb == method, f"api.md:{line}: {verb} under a {method} heading"
        operation = document["paths"][path][method.lower()]
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"
        assert re.match(pattern, parts.path), f"api.md:{line}: {parts.path} is not {path}"
        names = {p["name"] for p in operation["parameters"] if p.get("in") == "query"}
        for pair in filter(None, parts.query.split("&")):
            assert pair.split("=")[0] in names, f"api.md:{line}: undocumented query parameter {pair}"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        resp = app.request(target, method=verb, headers=headers, body=body.encode() if body else None,
                           expect_errors=True)
        assert resp.status_int == expected, f"api.md:{line}: {resp.status} {resp.text[:300]}"
        assert str(expected) in operation["responses"], f"api.md:{line}: {expected} is not documented"
        if resp.content_type == "application/json" and path != "/openapi.json":
            validator = document_validator(document, response_schema_pointer(path, method.lower(), expected))
            errors = list(validator.iter_errors(resp.json))
            assert not errors, f"api.md:{line}: {errors[0].message}"
