"""The OpenAPI 3.1 document, built from the route table and `schemas/`, and the /docs page.

The document is assembled, not written: the paths come from the app's own
route table (`falcon.inspect.inspect_routes`), every schema from the files
under `schemas/` that also validate requests, and each operation's prose and
status codes from the small OPERATIONS table below. `route_coverage()` tells
which routes have no entry and which entries have no route; the tests require
both to be empty, so the document can never drift from the service.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import falcon
from falcon import inspect

from .errors import NotFound
from .middleware import REQUEST_ID_RE
from .validation import SCHEMA_DIR, load_schema, schema_names

STATIC_DIR = Path(__file__).resolve().parent / "static" / "docs"
SWAGGER_UI_VERSION = "5.35.0"  # npm swagger-ui-dist, Apache-2.0; see docs/api.md
JSON = "application/json"
CSV = "text/csv"
HTML = "text/html"
ID_PATTERN = REQUEST_ID_RE.pattern

# Status -> (error code, when). Every error body is the envelope of schemas/responses/error.json.
ERRORS = {
    400: ("BAD_REQUEST", "The body is empty, not UTF-8 or not parseable JSON.",
          "request body is not valid JSON: Expecting value at line 1 column 1"),
    401: ("UNAUTHORIZED", "Missing or invalid `X-API-Key` while the server has `API_KEY` set. Checked before "
                          "anything else, so a bad body or an unknown record still gets 401.",
          "missing or invalid X-API-Key header"),
    404: ("NOT_FOUND", "No such record (an unknown id, or anything that is not a UUID).", "record not found"),
    409: ("CONFLICT", "The transition is not allowed from the record's current status (`details.status`), "
                      "or an `Idempotency-Key` was reused with a different request.",
          "record is processed, not pending"),
    413: ("PAYLOAD_TOO_LARGE", "The body is over `MAX_BODY_BYTES` (1 MiB by default); `details.max_bytes`.",
          "request body is over 1048576 bytes"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "The body is not `application/json` (no Content-Type is read as JSON).",
          "Content-Type 'text/plain' is not application/json"),
    422: ("VALIDATION_ERROR", "The body, query or a header fails validation; `details` lists every problem "
                             "with its location (`loc`) and `message`.", "request validation failed"),
    500: ("INTERNAL_ERROR", "Anything unexpected; the body never holds a stack trace or SQL.",
          "internal server error"),
    503: ("SERVICE_UNAVAILABLE", "The database is unreachable or locked past `DB_TIMEOUT_SECONDS`; try again.",
          "database unavailable, try again later"),
}
DB = (500, 503)
BODY = (400, 409, 413, 415, 422)


@dataclass(frozen=True)
class Operation:
    """What the route table cannot tell about one operation."""

    operation_id: str
    summary: str
    tag: str
    response: str | None  # schemas/responses/<name>, or None for non-JSON success bodies
    status: int = 200
    errors: tuple[int, ...] = (500,)
    query: str | None = None  # schemas/<name>: its properties are the query parameters
    body: str | None = None  # schemas/<name>: the request body
    write: bool = False  # needs X-API-Key when API_KEY is set
    idempotent: bool = False  # takes an Idempotency-Key header
    media: tuple[str, ...] = (JSON,)  # success content types
    description: str = ""


# (method, route as added in create_app) -> Operation. One entry per route and method.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation(
        "getHealth", "Is the service up and its database reachable?", "service", "health.json", errors=(503, 500),
        description="200 when the database answers; 503 with `status: unhealthy` when it does not. "
                    "Public, also when `API_KEY` is set."),
    ("GET", "/version"): Operation(
        "getVersion", "Version, commit and environment", "service", "version.json"),
    ("POST", "/records"): Operation(
        "createRecord", "Create a record (pending)", "records", "record.json", status=201,
        errors=(*BODY, 401, *DB), body="record_create.json", write=True, idempotent=True,
        description="Stores a pending record and its creation event; `Location` names the new record. "
                    "Unknown fields are refused. With `Idempotency-Key`, the same key and body return the "
                    "original 201 (same id, `Idempotent-Replayed: true`); the same key with another body is a 409."),
    ("GET", "/records"): Operation(
        "listRecords", "List records, filtered, sorted and paged", "records", "record_page.json",
        errors=(422, *DB), query="queries/list_records.json",
        description="Ties break by `id`, so pages never repeat or skip a record. Follow `next_cursor` "
                    "(pass it back as `cursor`) for constant-time paging at any depth."),
    ("POST", "/records/batch"): Operation(
        "createRecords", "Create 1 to 1000 records, all or nothing", "records", "batch_result.json", status=201,
        errors=(*BODY, 401, *DB), body="records_batch.json", write=True, idempotent=True,
        description="The whole body is validated first; every problem is located as "
                    "`[\"body\", \"records\", <index>, <field>]`. Then all records are stored in one "
                    "transaction, or none."),
    ("GET", "/records/{record_id}"): Operation(
        "getRecord", "Fetch one record", "records", "record.json", errors=(404, *DB)),
    ("POST", "/records/{record_id}/process"): Operation(
        "processRecord", "Process a pending record", "records", "record.json",
        errors=(401, 404, 409, *DB), write=True,
        description="Runs the category's processor once: the record becomes `processed` or `failed` "
                    "(with `error`). A record that is not pending is a 409 whose `details.status` is its status."),
    ("POST", "/records/{record_id}/retry"): Operation(
        "retryRecord", "Make a failed record pending again", "records", "record.json",
        errors=(401, 404, 409, *DB), write=True,
        description="Only a failed record can be retried; anything else is a 409."),
    ("GET", "/records/{record_id}/events"): Operation(
        "listRecordEvents", "A record's audit trail, oldest first", "records", "events.json",
        errors=(404, *DB)),
    ("GET", "/reports/summary"): Operation(
        "getSummary", "Totals by status, category and source", "reports", "summary.json",
        errors=(422, *DB), query="queries/summary.json",
        description="One consistent snapshot. `date_from` after `date_to` is a 422."),
    ("GET", "/reports/timeseries"): Operation(
        "getTimeseries", "Records created per hour or day, by status", "reports", "timeseries.json",
        errors=(422, *DB), query="queries/timeseries.json",
        description="One entry per bucket in time order; the summary's filters apply."),
    ("GET", "/dashboard"): Operation(
        "getDashboard", "The operator's dashboard (HTML)", "service", None, errors=DB, media=(HTML,)),
    ("GET", "/openapi.json"): Operation(
        "getOpenAPI", "This OpenAPI 3.1 document", "docs", None, media=(JSON,),
        description="Assembled from the route table and the JSON Schemas that validate requests."),
    ("GET", "/docs"): Operation(
        "getDocs", "Interactive API documentation (HTML)", "docs", None, media=(HTML,),
        description="Swagger UI served from this service's own assets: no request leaves your network."),
    ("GET", "/docs/assets/{name}"): Operation(
        "getDocsAsset", "A script, style or image of the documentation page", "docs", None,
        errors=(404, 500), media=("application/javascript", "text/css", "image/png", "text/plain"),
        description="Long-lived cache headers; an unknown name is a 404."),
}

# Links let clients (and schemathesis' stateful phase) go from a record to what can be done with it.
RECORD_LINKS = {
    "GetRecord": "getRecord", "ProcessRecord": "processRecord",
    "RetryRecord": "retryRecord", "ListRecordEvents": "listRecordEvents",
}

# The documentation page's files: public name -> (file under static/docs, content type).
ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "application/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "docs-init.js": ("docs-init.js", "application/javascript; charset=utf-8"),
    "docs.css": ("docs.css", "text/css; charset=utf-8"),
    "favicon-32x32.png": ("favicon-32x32.png", "image/png"),
    "LICENSE": ("LICENSE", "text/plain; charset=utf-8"),
    "NOTICE": ("NOTICE", "text/plain; charset=utf-8"),
    "swagger-ui-bundle.js.LICENSE.txt": ("swagger-ui-bundle.js.LICENSE.txt", "text/plain; charset=utf-8"),
}

# The page loads nothing but its own origin: no inline script or style, no external host
# (tests/test_docs_browser.py records every request and every CSP violation).
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def doc_path(route: str) -> str:
    """A route as the document spells it: `{record_id}` is `{id}`, as in SPEC.md and the README."""
    return route.replace("{record_id}", "{id}")


def routed_operations(app: falcon.App) -> list[tuple[str, str]]:
    """Every (method, route) the app answers, Falcon's own OPTIONS responder aside."""
    found = []
    for route in inspect.inspect_routes(app):
        for method in route.methods:
            if not method.internal:
                found.append((method.method, route.path))
    return found


def route_coverage(app: falcon.App) -> tuple[list, list]:
    """(routes without an OPERATIONS entry, OPERATIONS entries without a route)."""
    routed = routed_operations(app)
    return sorted(set(routed) - set(OPERATIONS)), sorted(set(OPERATIONS) - set(routed))


# ---------------------------------------------------------------- schemas


def component_schemas(schema_dir: Path = SCHEMA_DIR) -> tuple[dict, dict]:
    """(components.schemas by title, schema file -> component name).

    The files are used as they are (OpenAPI 3.1 is JSON Schema 2020-12); only
    `$id`-relative references are rewritten to point inside the document.
    """
    loaded = {name: load_schema(name, schema_dir) for name in schema_names(schema_dir)}
    by_id = {schema["$id"]: schema["title"] for schema in loaded.values()}
    titles = [schema["title"] for schema in loaded.values()]
    duplicates = {t for t in titles if titles.count(t) > 1}
    if duplicates:
        raise ValueError(f"schemas share a title: {sorted(duplicates)}")
    components = {}
    for schema in loaded.values():
        body = {k: v for k, v in schema.items() if k not in ("$id", "$schema")}
        components[schema["title"]] = _rewrite_refs(copy.deepcopy(body), schema["$id"], by_id)
    return components, {name: schema["title"] for name, schema in loaded.items()}


def _rewrite_refs(node, base: str, by_id: dict[str, str]):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            target, fragment = urldefrag(urljoin(base, node["$ref"]))
            if target not in by_id:
                raise ValueError(f"{base}: $ref {node['$ref']!r} names no schema")
            node["$ref"] = f"#/components/schemas/{by_id[target]}{fragment}"
        for value in node.values():
            _rewrite_refs(value, base, by_id)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, base, by_id)
    return node


def _ref(title: str, pointer: str = "") -> dict:
    return {"$ref": f"#/components/schemas/{title}{pointer}"}


# ---------------------------------------------------------------- the document


def query_parameters(schema_name: str, components: dict, titles: dict) -> list[dict]:
    """A query schema's properties as OpenAPI parameters: schema, bounds, default, description."""
    if schema_name not in titles:
        return []  # not written yet: the route is documented without its parameters
    component = components[titles[schema_name]]
    params = []
    for name, prop in component.get("properties", {}).items():
        schema = copy.deepcopy(prop)
        notes = [schema.pop("description", "")]
        if schema.get("format") == "date-or-date-time":
            notes.append("An ISO 8601 date (`2026-01-05`) or date-time (`2026-01-05T10:00:00Z`); "
                         "no zone means UTC.")
            schema.setdefault("examples", ["2026-01-05"])
        if "x-clamp-maximum" in schema:
            notes.append(f"A value above {schema['x-clamp-maximum']} is clamped to {schema['x-clamp-maximum']}.")
        if "default" in schema:
            notes.append(f"Default `{schema['default']}`.")
        params.append({
            "name": name, "in": "query", "required": False,
            "description": " ".join(n for n in notes if n).strip(),
            "schema": schema,
        })
    return params


def _headers(status: int, op: Operation) -> dict:
    headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if status == 201 and op.operation_id == "createRecord":
        headers["Location"] = {"description": "The new record, relative and including any mount prefix "
                                              "(`/records/{id}`).", "schema": {"type": "string"}}
    if status == 201 and op.idempotent:
        headers["Idempotent-Replayed"] = {"description": "`true` when this is the stored response of an "
                                                         "earlier request with the same Idempotency-Key.",
                                          "schema": {"type": "string", "enum": ["true"]}}
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"},
                                       "description": 'ApiKey realm="workflow", header="X-API-Key"'}
    return headers


def success_media(op: Operation, components: dict, titles: dict) -> tuple[str, ...]:
    """The success content types: the table's, plus CSV when the query schema offers `format=csv`."""
    media = op.media
    if op.query in titles:
        formats = components[titles[op.query]].get("properties", {}).get("format", {}).get("enum", [])
        if "csv" in formats:
            media = (*media, CSV)
    return media


def _success(op: Operation, components: dict, titles: dict) -> dict:
    response = {"description": op.summary, "headers": _headers(op.status, op), "content": {}}
    for media in success_media(op, components, titles):
        if media == JSON and op.response:
            title = titles[f"responses/{op.response}"]
            content = {"schema": _ref(title)}
            examples = components[title].get("examples")
            if examples:
                content["examples"] = {"example": {"value": examples[0]}}
            response["content"][media] = content
        elif media == JSON:  # the OpenAPI document itself
            response["content"][media] = {"schema": {"type": "object"}}
        elif media == CSV:
            response["content"][media] = {"schema": {"type": "string", "description": "A header row, then rows."}}
        else:
            response["content"][media] = {"schema": {"type": "string"}}
    if op.response == "record.json":
        response["links"] = {
            name: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
            for name, target in RECORD_LINKS.items()
        }
    return response


def _error(status: int, op: Operation) -> dict:
    code, when, message = ERRORS[status]
    if status == 503 and op.response == "health.json":
        return {"description": "The database is unreachable.", "headers": _headers(status, op),
                "content": {JSON: {"schema": _ref("Health"), "examples": {"unhealthy": {"value": {
                    "status": "unhealthy", "database": "disconnected", "error": "OperationalError"}}}}}}
    example = {"error": {"code": code, "message": message, "details": None},
               "request_id": "7c0e3f5a-2b1d-4c8e-9f6a-0d1e2f3a4b5c"}
    if status == 422:
        example["error"]["details"] = [{"loc": ["body", "source"], "message": "field required"}]
    schema = {"allOf": [_ref("Error"), {"properties": {"error": {"properties": {"code": {"const": code}}}}}]}
    return {"description": when, "headers": _headers(status, op),
            "content": {JSON: {"schema": schema, "examples": {code.lower(): {"value": example}}}}}


def _operation(route: str, op: Operation, components: dict, titles: dict, keys_set: bool) -> dict:
    params = []
    if "{record_id}" in route:
        params.append({"name": "id", "in": "path", "required": True,
                       "description": "The record's UUID; anything else is a 404.",
                       "schema": {"type": "string", "format": "uuid"},
                       "example": "3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f"})
    if "{name}" in route:
        params.append({"name": "name", "in": "path", "required": True, "description": "The asset's file name.",
                       "schema": {"type": "string", "enum": sorted(ASSETS)}})
    if op.query:
        params.extend(query_parameters(op.query, components, titles))
    if op.idempotent:
        params.append({"$ref": "#/components/parameters/Idempotency-Key"})
    params.append({"$ref": "#/components/parameters/X-Request-ID"})
    out = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": params,
        "responses": {str(op.status): _success(op, components, titles)},
    }
    if op.description:
        out["description"] = op.description
    if op.body:
        title = titles[op.body]
        out["requestBody"] = {"required": True, "content": {JSON: {
            "schema": _ref(title), "examples": _body_examples(op.body)}}}
    for status in sorted(op.errors):
        out["responses"][str(status)] = _error(status, op)
    if op.write:
        # With API_KEY set the key is required; without it writes are open, as in the old service.
        out["security"] = [{"ApiKeyAuth": []}] if keys_set else [{"ApiKeyAuth": []}, {}]
    return out


def _body_examples(schema_name: str) -> dict:
    one = {"source": "api", "category": "invoice", "payload": {"priority": 9, "amount": 120.5}}
    if schema_name == "records_batch.json":
        return {"two records": {"value": {"records": [one, {"source": "import", "category": "ticket",
                                                                "payload": {"priority": "3"}}]}}}
    return {"invoice": {"value": one}, "no priority": {"value": {"source": "web", "category": "note",
                                                                  "payload": {}}}}


def build_document(app: falcon.App, settings, root_path: str = "") -> dict:
    """The OpenAPI 3.1 document of `app`, for an app mounted at `root_path`."""
    components, titles = component_schemas()
    keys_set = bool(getattr(settings, "api_keys", ()))
    paths: dict[str, dict] = {}
    for method, route in routed_operations(app):
        op = OPERATIONS.get((method, route))
        if op is None:
            continue  # route_coverage() and tests/test_openapi.py catch it
        paths.setdefault(doc_path(route), {})[method.lower()] = _operation(route, op, components, titles, keys_set)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": settings.project_name,
            "version": settings.app_version,
            "description": _INFO,
        },
        "servers": [{"url": root_path or "/", "description": "This service" + (
            f", mounted under `{root_path}`" if root_path else "")}],
        "tags": [
            {"name": "records", "description": "Ingest records and move them through their states."},
            {"name": "reports", "description": "Counts over records."},
            {"name": "service", "description": "Health, version and the operator's dashboard."},
            {"name": "docs", "description": "This document and the interactive page."},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"ApiKeyAuth": {
                "type": "apiKey", "in": "header", "name": "X-API-Key",
                "description": "Needed on POST when the server has `API_KEY` set (a comma-separated list "
                               "allows rotation). GET is always public."}},
            "parameters": {
                "X-Request-ID": {
                    "name": "X-Request-ID", "in": "header", "required": False,
                    "description": "Kept and echoed when it is 1-128 characters of `[A-Za-z0-9._:-]`; any "
                                   "other value is replaced by a new UUID (never refused). Logged and stored "
                                   "in audit events.",
                    "schema": {"type": "string"}, "example": "req-2026-01-05-0001"},
                "Idempotency-Key": {
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "The same key and body return the original response instead of creating "
                                   "again; the same key with another body is a 409. Kept at least 24 hours. "
                                   "Use a random value such as a UUID.",
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                    "example": "0b6f1c9e-8a8e-4a55-9d0e-6f3c1f1b2a77"},
            },
            "headers": {"X-Request-ID": {"description": "The request id (the client's, or a new UUID).",
                                         "schema": {"type": "string", "pattern": ID_PATTERN}}},
        },
    }


_INFO = """Ingests records, moves them through `pending → processed | failed` (and `failed → pending`
by retry) and reports on them. Wire-compatible with the FastAPI service it replaces.

Every schema here is one of the JSON Schema files that validate requests, so this page and the
service cannot disagree. Every error body is `{"error": {"code", "message", "details"}, "request_id"}`
(the `Error` schema); any path answers 405 `METHOD_NOT_ALLOWED` with an `Allow` header for a method it
does not serve, and an unknown path is a 404 `NOT_FOUND`. Every response carries `X-Request-ID`."""


class OpenAPIDocument:
    """`GET /openapi.json`."""

    def __init__(self, app: falcon.App, settings):
        self.app, self.settings = app, settings
        self._cache: dict[str, bytes] = {}  # root path -> serialised document; routes are fixed once serving

    def on_get(self, req, resp):
        root = req.root_path or ""
        if root not in self._cache:
            if len(self._cache) >= 8:  # SCRIPT_NAME comes from the server, but bound it anyway
                self._cache.clear()
            document = build_document(self.app, self.settings, root)
            self._cache[root] = json.dumps(document, ensure_ascii=False).encode("utf-8")
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-cache"]
        resp.data = self._cache[root]


class DocsPage:
    """`GET /docs`: interactive API documentation served from local assets."""

    def __init__(self, static_dir: Path = STATIC_DIR):
        self.static_dir = static_dir

    def on_get(self, req, resp):
        root = html.escape(req.root_path or "", quote=True)
        assets = f"{root}/docs/assets"
        version = _assets_version(self.static_dir)
        resp.content_type = falcon.MEDIA_HTML
        resp.set_headers(SECURITY_HEADERS)
        resp.cache_control = ["no-cache"]
        resp.text = _PAGE.format(assets=assets, spec=f"{root}/openapi.json", v=version)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API documentation</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png?v={v}">
<link rel="stylesheet" href="{assets}/swagger-ui.css?v={v}">
<link rel="stylesheet" href="{assets}/docs.css?v={v}">
</head>
<body>
<noscript><p>This page needs JavaScript. The raw document is at <a href="{spec}">{spec}</a>.</p></noscript>
<div id="swagger-ui" data-spec-url="{spec}"></div>
<script src="{assets}/swagger-ui-bundle.js?v={v}"></script>
<script src="{assets}/docs-init.js?v={v}"></script>
</body>
</html>
"""


@cache
def _assets_version(static_dir: Path) -> str:
    """A short hash of the assets, so that their long-cached URLs change when they do."""
    digest = hashlib.sha256()
    for name in sorted(ASSETS):
        digest.update((static_dir / ASSETS[name][0]).read_bytes())
    return digest.hexdigest()[:12]


class DocsAsset:
    """`GET /docs/assets/{name}`: the documentation page's own files, from a fixed list."""

    def __init__(self, static_dir: Path = STATIC_DIR):
        self.static_dir = static_dir
        self._files: dict[str, bytes] = {}

    def on_get(self, req, resp, name):
        entry = ASSETS.get(name)  # a fixed list: no path from the request ever reaches the file system
        if entry is None:
            raise NotFound("no such documentation asset")
        filename, content_type = entry
        resp.content_type = content_type
        resp.set_headers(SECURITY_HEADERS)
        resp.cache_control = ["public", "max-age=31536000", "immutable"]
        if filename not in self._files:
            self._files[filename] = (self.static_dir / filename).read_bytes()
        resp.data = self._files[filename]
