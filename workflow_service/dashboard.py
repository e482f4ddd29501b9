"""`GET /dashboard`: the operator's page, server-rendered HTML without external assets."""

from __future__ import annotations

import falcon

from .db import Database


class Dashboard:
    """The state of the system at a glance."""

    def __init__(self, db: Database):
        self.db = db

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_HTML
        resp.text = "<!doctype html><title>Workflow dashboard</title><p>Coming soon.</p>"
