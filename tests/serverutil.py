"""Start and stop the real server (`python -m workflow serve`) for end-to-end tests.

Everything binds and talks to 127.0.0.1 only. Every wait is bounded in time and
in count; a server is stopped by its own PID (SIGTERM, bounded wait, then SIGKILL
of the process group it leads, which holds only its gunicorn workers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
STOP_TIMEOUT = 15.0

# Variables the service reads; a test sets the ones it wants, none leak in from the caller.
SERVICE_VARIABLES = ("DATABASE_URL", "LOG_LEVEL", "APP_ENV", "PROJECT_NAME", "APP_VERSION", "API_KEY",
                     "GIT_COMMIT", "MAX_BODY_BYTES", "DB_TIMEOUT_SECONDS", "WEB_CONCURRENCY")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def service_env(**variables: str) -> dict[str, str]:
    """The caller's environment without the service's variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(variables)
    env["PYTHONUNBUFFERED"] = "1"
    # An empty value overrides any `.env` in the working directory (config treats it as unset).
    for name in ("API_KEY", "APP_ENV"):
        env.setdefault(name, "")
    return env


def serve_command(port: int, workers: int = 2, migrate: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """The README's start command, on 127.0.0.1 and `port`."""
    argv = [sys.executable, "-m", "workflow", "serve", "--host", HOST, "--port", str(port),
            "--workers", str(workers), *extra]
    if not migrate:
        argv.append("--no-migrate")
    return argv


@dataclass
class Server:
    """A running `python -m workflow serve` and where its output goes."""

    proc: subprocess.Popen
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        """Exit code and output tails, for assertion messages."""
        return (f"server pid {self.proc.pid} exit code {self.proc.poll()}\n"
                f"--- stdout (tail) ---\n{self.stdout()[-3000:]}\n--- stderr (tail) ---\n{self.stderr()[-3000:]}")


def start_server(database_url: str, log_dir: Path, *, workers: int = 2, migrate: bool = True,
                 wait: bool = True, extra: tuple[str, ...] = (), **variables: str) -> Server:
    """Run the README command on a free port; wait for a 200 from /health unless `wait=False`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stdout_path = log_dir / f"server-{port}.out"
    stderr_path = log_dir / f"server-{port}.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            serve_command(port, workers, migrate, extra),
            cwd=ROOT,
            env=service_env(DATABASE_URL=database_url, **variables),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: gunicorn and its workers only
        )
    server = Server(proc, port, stdout_path, stderr_path)
    if wait:
        try:
            wait_for_health(server)
        except BaseException:
            stop_server(server)
            raise
    return server


def wait_for_health(server: Server, timeout: float = READY_TIMEOUT, statuses: tuple[int, ...] = (200,)) -> tuple:
    """Poll GET /health until it answers one of `statuses`; return (status, headers, body)."""
    deadline = time.monotonic() + timeout
    attempts = int(timeout / POLL_INTERVAL) + 1
    last = "no answer"
    for _ in range(attempts):
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited before it was ready\n{server.describe()}")
        remaining = max(0.5, deadline - time.monotonic())
        try:
            answer = request("GET", f"{server.base_url}/health", timeout=min(10.0, remaining))
        except OSError as exc:  # not listening yet
            last = f"{type(exc).__name__}: {exc}"
        else:
            if answer[0] in statuses:
                return answer
            last = f"status {answer[0]}: {answer[2][:200]!r}"
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    raise AssertionError(f"/health did not answer {statuses} within {timeout}s (last: {last})\n{server.describe()}")


def stop_server(server: Server) -> None:
    """SIGTERM the server, wait (bounded), then SIGKILL its own process group."""
    proc = server.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftover workers of this server only
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=STOP_TIMEOUT)


def request(method: str, url: str, body=None, headers: dict | None = None,
            timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """One HTTP request with urllib; (status, lower-cased headers, body) also for 4xx/5xx."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def json_lines(text: str) -> list[dict]:
    """The JSON objects among the lines of `text` (other lines are skipped)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"  # the socket states of /proc/<pid>/net/tcp


def tcp_sockets(pid: int, state: str, *, local_port: int | None = None,
                remote_port: int | None = None) -> set[str]:
    """The inodes of process `pid`'s TCP sockets in `state` (TCP_ESTABLISHED, TCP_LISTEN),
    on `local_port` and/or to `remote_port` when given."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except FileNotFoundError:
        return set()
    found = set()
    for cols in map(str.split, lines):
        local, remote, sock_state, inode = cols[1], cols[2], cols[3], cols[9]
        if sock_state != state or inode not in inodes:
            continue
        if local_port is not None and int(local.split(":")[1], 16) != local_port:
            continue
        if remote_port is not None and int(remote.split(":")[1], 16) != remote_port:
            continue
        found.add(inode)
    return found
