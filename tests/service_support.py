"""Helpers of the HTTP service tests: start `dpf-sched serve` as a subprocess on a free port, wait until it is
ready, stop or SIGKILL it, and create tokens through `dpf-sched tokens create` (the token is its only stdout
line).

Used by the service tests of this repository (API, auth, failover, load, restart, Opacus). Typical use::

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = create_token(db, "ops", admin=True)
    with start_server(db, "dpf-n", params={"N": 4}) as server:
        httpx.get(server.url + "/v1/ledger", headers=auth(admin))
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

#: How the tests run the CLI: the installed package's entry point, through this interpreter.
CLI = [sys.executable, "-c", "from dpf_sched.cli import main; main()"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(token: str) -> dict[str, str]:
    """The Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def run_cli(*args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``dpf-sched ARGS`` and return the completed process (stdout/stderr as text)."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dpf-sched {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def create_token(db: str, tenant: str, admin: bool = False, composition: str | None = None) -> str:
    """Create a token for ``tenant`` (an admin token with ``admin``) with the CLI; return it.

    Creates the ledger (basic composition, or ``composition``) when the database holds none yet.
    """
    args = ["tokens", "create", "--db", db, "--tenant", tenant]
    if admin:
        args.append("--admin")
    if composition is not None:
        args += ["--composition", composition]
    out = run_cli(*args).stdout.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


def token_id(token: str) -> str:
    """The id part of a token ``dpf_<id>.<secret>`` (what `dpf-sched tokens revoke` takes)."""
    return token.split(".", 1)[0].removeprefix("dpf_")


def revoke_token(db: str, token: str) -> None:
    """Revoke a token with the CLI."""
    run_cli("tokens", "revoke", "--db", db, token_id(token))


@dataclass
class Server:
    """A running `dpf-sched serve` subprocess."""

    url: str
    proc: subprocess.Popen[bytes]
    db: str
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed, no lease is given back politely)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the server and wait for a clean exit (SIGKILL after ``timeout``); return the exit status."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def log(self) -> str:
        """What the server wrote on stdout and stderr so far (JSON log lines)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ready(self) -> dict[str, Any] | None:
        """The /readyz reply, or None when the server does not answer ready."""
        try:
            r = httpx.get(self.url + "/readyz", timeout=2.0)
        except httpx.HTTPError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_leader(self, timeout: float = 30.0) -> bool:
        """Wait until this server reports that it holds the grant lease; True if it does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.ready()
            if info is not None and info.get("leader"):
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    db: str,
    policy: str = "fcfs",
    params: Mapping[str, Any] | Sequence[str] = (),
    *,
    port: int | None = None,
    poll: float | None = 0.02,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start ``dpf-sched serve --db DB --policy POLICY [--param k=v ...] --port P`` and wait for /readyz.

    ``params`` is a mapping or a list of ``k=v`` strings. The server's output goes to a log file (``log_dir``
    or a temporary directory). Raises ``AssertionError`` with the log when it does not become ready in time.
    """
    port = free_port() if port is None else port
    items = [f"{k}={v}" for k, v in params.items()] if isinstance(params, Mapping) else list(params)
    args = ["serve", "--db", db, "--policy", policy, "--host", "127.0.0.1", "--port", str(port)]
    for item in items:
        args += ["--param", item]
    if poll is not None:
        args += ["--poll", str(poll)]
    args += list(extra)
    if log_dir is None:
        import tempfile

        log_dir = Path(tempfile.mkdtemp(prefix="dpf-serve-"))
    log_path = log_dir / f"serve-{port}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", proc, db, port, log_path, args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive:
            raise AssertionError(f"dpf-sched serve exited with {proc.returncode}:\n{server.log()}")
        if server.ready() is not None:
            return server
        time.sleep(0.05)
    server.kill()
    raise AssertionError(f"dpf-sched serve did not become ready in {timeout} s:\n{server.log()}")


@contextlib.contextmanager
def running_server(db: str, policy: str = "fcfs", **kwargs: Any) -> Iterator[Server]:
    """:func:`start_server` as a context manager that stops (or kills) the server at the end."""
    server = start_server(db, policy, **kwargs)
    try:
        yield server
    finally:
        if server.alive:
            server.stop()


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Call ``predicate()`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
