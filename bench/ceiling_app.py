"""The ceiling for `GET /records/{id}`: bare Falcon plus one point query, nothing else.

No middleware, no validation, no logging, no pool: one connection per thread,
opened on first use. `bench/run.py` serves it twice: under the service's own
gunicorn settings (gthread, 4 threads, keep-alive, a socket per worker: the
ceiling the target compares with) and under gunicorn's sync workers, e.g.

    CEILING_DATABASE_URL=sqlite:////path/to/file.db gunicorn --chdir bench ceiling_app:app --workers 2

and drives both with the same get-by-id script as the service. A PostgreSQL URL
(`postgresql://...`) makes it do the same query through psycopg.
"""

import json
import os
import sqlite3
import threading

import falcon

URL = os.environ["CEILING_DATABASE_URL"]
COLUMNS = ("id, source, category, payload, status, result, classification, score, error, attempts, "
           "created_at, updated_at, processed_at")
_local = threading.local()


def _connect():
    if URL.startswith("sqlite:///"):
        conn = sqlite3.connect(URL[len("sqlite:///"):], check_same_thread=False)
        return conn, f"SELECT {COLUMNS} FROM records WHERE id = ?"
    import psycopg

    conn = psycopg.connect(URL, autocommit=True)
    return conn, f"SELECT {COLUMNS} FROM records WHERE id = %s"


class Record:
    def on_get(self, req, resp, record_id):
        if not hasattr(_local, "conn"):
            _local.conn = _connect()
        conn, sql = _local.conn
        row = conn.execute(sql, (record_id,)).fetchone()
        if row is None:
            raise falcon.HTTPNotFound()
        names = [c.strip() for c in COLUMNS.split(",")]
        out = {k: (str(v) if k.endswith("_at") or k == "id" else v) for k, v in zip(names, row, strict=True)}
        for k in ("payload", "result"):
            if isinstance(out[k], str):
                out[k] = json.loads(out[k])
        resp.media = out


app = falcon.App()
app.add_route("/records/{record_id}", Record())
