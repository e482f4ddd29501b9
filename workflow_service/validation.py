"""Request validation: JSON bodies and query strings against `schemas/`.

Every problem is reported, each with its location, in a 422's `details`.
Hostile JSON (NaN, huge numbers, deep nesting, NUL, lone surrogates) is refused
here, before any work is done.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema_rs

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, problem
from .timeutil import parse_bound

if TYPE_CHECKING:  # python-jsonschema is imported on the first invalid input (validator_for)
    from jsonschema import Draft202012Validator
    from referencing import Registry

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAX_JSON_DEPTH = 64


def load_schema(name: str, schema_dir: Path = SCHEMA_DIR) -> dict:
    """A schema document from `schemas/`, checked once; shared, so never changed by its callers."""
    return _load_schema(name, schema_dir)


@cache
def _load_schema(name: str, schema_dir: Path) -> dict:
    # One cache key however the directory is passed: `load_schema(name)` and `load_schema(name, SCHEMA_DIR)`
    # once meta-checked the file twice, and the second check ran compile code in a worker (3.4 MiB of RSS).
    schema = json.loads((schema_dir / name).read_text(encoding="utf-8"))
    jsonschema_rs.meta.validate(schema)
    return schema


@cache
def schema_registry(schema_dir: Path = SCHEMA_DIR) -> Registry:
    """Every request schema by its `$id`, so that schemas can `$ref` each other."""
    from referencing import Registry, Resource

    resources = []
    for name in schema_names(schema_dir):
        schema = load_schema(name, schema_dir)
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@cache
def validator_for(name: str) -> Draft202012Validator:
    """A compiled validator for `schemas/<name>`: it explains every problem.

    Imported here, not at start-up: python-jsonschema and its dependencies
    (3.8 MiB to import; 2-2.5 MiB of a worker's peak, docs/benchmarks.md) are
    not needed by a worker that only ever sees valid input.
    """
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name), registry=schema_registry())


# Only a name for resolving `$ref`s between our own files; nothing is ever fetched.
_BASE = "https://workflow.invalid/schemas/"


@cache
def fast_validator_for(name: str):
    """The same schema compiled by jsonschema-rs: a yes/no answer in microseconds.

    Valid bodies (nearly all) pass through this fast path only; an invalid one
    is validated again by `validator_for` to explain every problem
    (`tests/test_validation_parity.py` checks the two agree).
    """
    return jsonschema_rs.validator_for(_absolute(load_schema(name)), registry=_fast_registry())


def _absolute(schema: dict) -> dict:
    return {**schema, "$id": _BASE + schema["$id"]}


@cache
def _fast_registry() -> jsonschema_rs.Registry:
    """Every schema by its absolute `$id`, built once for all of `fast_validator_for`'s validators."""
    schemas = [_absolute(load_schema(name)) for name in schema_names()]
    return jsonschema_rs.Registry([(schema["$id"], schema) for schema in schemas])


def compile_validators() -> None:
    """Compile every schema's `fast_validator_for` now instead of on first use."""
    for name in schema_names():
        fast_validator_for(name)


@cache
def schema_names(schema_dir: Path = SCHEMA_DIR) -> tuple[str, ...]:
    """Every request, query and response schema (category schemas are the embedder's own)."""
    return tuple(str(p.relative_to(schema_dir)) for p in sorted(schema_dir.glob("**/*.json"))
                 if "categories" not in p.relative_to(schema_dir).parts)


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str):
    raise _NotJSON(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJSON(f"number {text[:40]} is out of range")
    return value


def is_json_media_type(content_type: str | None) -> bool:
    """True for application/json and application/*+json (any parameters)."""
    if not content_type:
        return True  # like the old service: no Content-Type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def read_body(req, max_bytes: int) -> bytes:
    """The request body's bytes, at most `max_bytes`, from a JSON request; `parse_json_body` reads them."""
    if not is_json_media_type(req.content_type):
        raise UnsupportedMediaType(f"Content-Type {req.content_type.split(';')[0]!r} is not application/json")
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body is over {max_bytes} bytes", details={"max_bytes": max_bytes})
    # A chunked body has no Content-Length, so Falcon's bounded stream would read nothing;
    # the server decodes the chunks on the raw stream, and we still stop at the limit.
    chunked = length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
    raw = (req.stream if chunked else req.bounded_stream).read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body is over {max_bytes} bytes", details={"max_bytes": max_bytes})
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON object")
    return raw


def parse_json_body(raw: bytes):
    """A request body (see `read_body`) parsed as JSON, refusing what no database stores intact."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except _NotJSON as exc:
        raise ValidationFailed(details=[problem(["body"], str(exc))]) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValidationFailed(details=[problem(["body"], f"nested deeper than {MAX_JSON_DEPTH} levels")]) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ValidationFailed(details=[problem(["body"], str(exc)[:200])]) from None
    check_json_values(document, text)
    return document


# In JSON text a NUL or a lone surrogate can only arrive escaped: raw control characters are
# invalid JSON, and raw surrogates are invalid UTF-8.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def check_json_values(document, text: str | None = None) -> None:
    """Refuse nesting past MAX_JSON_DEPTH and strings that no database stores intact.

    Given the JSON `text` it was parsed from, a document whose text holds no suspect escape
    and whose containers are shallow enough is passed without visiting each value.
    """
    if text is not None and not _SUSPECT_ESCAPE.search(text) and not _deeper_than(document, MAX_JSON_DEPTH):
        return
    problems = []
    stack = [(document, ["body"], 0)]
    while stack and len(problems) < 20:
        value, loc, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            problems.append(problem(loc, f"nested deeper than {MAX_JSON_DEPTH} levels"))
            break
        if isinstance(value, dict):
            for key, item in value.items():
                if _bad_text(key):
                    problems.append(problem(loc, _bad_text(key) + " in a field name"))
                stack.append((item, loc + [key], depth + 1))
        elif isinstance(value, list):
            stack.extend((item, loc + [i], depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str) and _bad_text(value):
            problems.append(problem(loc, _bad_text(value)))
    if problems:
        raise ValidationFailed(details=problems)


def _deeper_than(document, limit: int) -> bool:
    """Whether any value sits deeper than `limit` (the document itself is at depth 0)."""
    stack = [(document, 0)] if type(document) in (dict, list) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if type(value) is dict else value
        if children and depth >= limit:
            return True
        for child in children:
            if type(child) in (dict, list):
                stack.append((child, depth + 1))
    return False


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogate characters are not allowed"
    return None


_MESSAGES = {
    "type": lambda e: f"must be of type {e.validator_value}",
    "minLength": lambda e: f"must be at least {e.validator_value} characters",
    "maxLength": lambda e: f"must be at most {e.validator_value} characters",
    "minimum": lambda e: f"must be at least {e.validator_value}",
    "maximum": lambda e: f"must be at most {e.validator_value}",
    "enum": lambda e: "must be one of: " + ", ".join(map(str, e.validator_value)),
    "minItems": lambda e: f"must have at least {e.validator_value} items",
    "maxItems": lambda e: f"must have at most {e.validator_value} items",
}


def schema_problems(validator: Draft202012Validator, document, root: str) -> list[dict]:
    """Every violation of `validator` in `document`, located under `root`."""
    problems = []
    for error in validator.iter_errors(document):
        loc = [root, *error.absolute_path]
        if error.validator == "required":
            missing = [p for p in error.validator_value if isinstance(error.instance, dict) and p not in error.instance]
            problems.extend(problem(loc + [name], "field required") for name in missing)
        elif error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            problems.extend(problem(loc + [name], "unknown field") for name in error.instance if name not in known)
        else:
            message = _MESSAGES.get(error.validator, lambda e: e.message[:200])(error)
            problems.append(problem(loc, message))
    unique = {json.dumps(p, sort_keys=True, default=str): p for p in problems}
    return sorted(unique.values(), key=lambda p: [str(part) for part in p["loc"]])


def validate_body(document, schema_name: str) -> dict:
    """Raise ValidationFailed listing every problem of `document` against the schema."""
    if fast_validator_for(schema_name).is_valid(document):
        return document
    problems = schema_problems(validator_for(schema_name), document, "body")
    if problems:
        raise ValidationFailed(details=problems)
    return document


def parse_query(req, schema_name: str) -> dict:
    """Coerce and validate the query string against `schemas/<schema_name>`.

    Integers are parsed, dates become stored-form bounds, defaults are applied,
    unknown parameters are ignored (as the old service did). The last value of
    a repeated parameter wins.
    """
    schema = load_schema(schema_name)
    values, problems = {}, []
    for name, spec in schema["properties"].items():
        raw = req.get_param(name)
        if raw is None:
            if "default" in spec:
                values[name] = spec["default"]
            continue
        if isinstance(raw, list):
            raw = raw[-1]
        if _bad_text(raw):
            problems.append(problem(["query", name], _bad_text(raw)))
        elif spec.get("type") == "integer":
            text = raw.strip()
            if not (text.lstrip("-").isdigit() and text.isascii() and len(text) <= 18):
                problems.append(problem(["query", name], "must be an integer"))
            else:
                values[name] = int(text)
        elif spec.get("format") == "date-or-date-time":
            try:
                values[name] = parse_bound(raw, upper=name in ("created_before", "date_to"))
            except ValueError:
                problems.append(problem(["query", name], "must be an ISO 8601 date or date-time"))
        else:
            values[name] = raw
    checkable = {k: v for k, v in values.items() if spec_format(schema, k) is None}
    if not fast_validator_for(schema_name).is_valid(checkable):
        problems.extend(schema_problems(validator_for(schema_name), checkable, "query"))
    if problems:
        raise ValidationFailed(details=sorted(problems, key=lambda p: [str(x) for x in p["loc"]]))
    return values


def spec_format(schema: dict, name: str) -> str | None:
    """The `format` of a query parameter's schema, if any."""
    return schema["properties"][name].get("format")
