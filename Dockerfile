# Workflow service: Falcon (WSGI) under gunicorn.
#   docker build -t workflow .
#   docker run -p 8000:8000 -v workflow-data:/app/data workflow
# See docs/runbook.md for configuration, migrations and backups.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_URL=sqlite:////app/data/workflow.db

# An unprivileged user owns the data directory; nothing runs as root.
# Fixed uid/gid 10001 so a bind-mounted data directory can be chowned to match.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app

WORKDIR /app

# Dependencies first, so code edits do not invalidate this layer.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY workflow.py ./
COPY workflow_service/ ./workflow_service/
COPY sql/ ./sql/
COPY schemas/ ./schemas/

# The SQLite default lives on a volume; a named volume inherits this ownership.
RUN mkdir -p /app/data && chown app:app /app/data
VOLUME /app/data

USER app

EXPOSE 8000

# No curl in the slim image: urlopen raises (exit 1) on a 503 or no answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `serve` applies pending migrations, then execs gunicorn (PID 1 gets SIGTERM).
CMD ["python", "-m", "workflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
