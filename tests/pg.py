"""A real PostgreSQL 15 server for tests: initdb in a temp dir (scram-sha-256, a password file),
listening on 127.0.0.1 and a free port, run as the postgres user when the tests run as root."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import free_port

BIN = Path(os.environ.get("FLEXIROASTER_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD = "pg-S3cret/with:odd@chars%20&more"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def uri(self) -> str:
        from urllib.parse import quote

        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.dbname, safe='')}"
        )

    def sql(self, query: str, params: tuple | list | None = None) -> list[tuple]:
        """Run one statement (committed); its rows, or [] for one without a result."""
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(self.uri(), autocommit=True) as con, con.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(_as_postgres(args), capture_output=True, text=True, timeout=60, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done


@contextlib.contextmanager
def postgres_server(user: str = "flexi", dbname: str = "flexi") -> Iterator[PgServer]:
    """Start a throwaway server; stop it (fast) and remove its files at the end."""
    if not (BIN / "postgres").exists():
        pytest.fail(
            f"PostgreSQL 15 binaries not found in {BIN}: `make postgres` installs them"
            " (apt-get install postgresql-15)",
            pytrace=False,
        )
    root = Path(tempfile.mkdtemp(prefix="flexiroaster-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(root, "postgres", "postgres")
    data, sock, pwfile = root / "data", root / "sock", root / "pwfile"
    for d in (data, sock):
        d.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(d, "postgres", "postgres")
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    port = free_port()
    _run([
        str(BIN / "initdb"), "-D", str(data), "-U", user, "--auth=scram-sha-256",
        f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync",
    ])  # fmt: skip
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sock}"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    _run([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"])
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            )
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {port} not ready: {(root / 'log').read_text()}")
            time.sleep(0.1)
        server = PgServer("127.0.0.1", port, user, PASSWORD, "postgres")
        server.sql(f"CREATE DATABASE {dbname}")
        yield PgServer("127.0.0.1", port, user, PASSWORD, dbname)
    finally:
        subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A PostgreSQL 15 server for the whole session: (host, port, user, password, dbname)."""
    with postgres_server() as server:
        yield server
