"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package (.ci/run installs it).

    from tests.postgres import postgres_server, postgres_url   # noqa: F401  (pytest fixtures)

    postgres_server   (session) the URL of a server started once per test process: initdb into a fresh folder
                      under /tmp, then `postgres` on a unix socket in that folder only (no TCP port), trust
                      authentication; stopped at exit
    postgres_url      (test) the URL of a new empty database on that server
    start_postgres(tmp_path) -> URL, stop_postgres(URL), new_database(URL) -> URL: the same by hand (a server
                      is stopped at exit at the latest)

PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user, in a folder it owns
(pytest's tmp_path is root's alone); its log goes to tmp_path/postgres.log. Durability settings are off (fsync,
full-page writes): the tests kill clients, never the server. Without the binaries the tests that need them are
skipped, except in CI, where that fails.
"""
import atexit
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

_servers: dict[str, tuple[subprocess.Popen, Path]] = {}
_databases = itertools.count()
_shared: list[str] = []  # the URL of the server the fixture started


def binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def _as_postgres(folder: Path) -> dict:
    """Popen arguments: in `folder` (a checkout under /root is closed to the postgres user), as postgres if root."""
    return dict(cwd=folder) | (dict(user="postgres", group="postgres", extra_groups=[]) if os.geteuid() == 0 else {})


def start_postgres(tmp_path: Path, timeout_s: float = 30.0) -> str:
    """Start a PostgreSQL server of its own (see the module docstring); the URL of its `postgres` database."""
    bin_dir = binaries()
    if bin_dir is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no PostgreSQL under /usr/lib/postgresql")
    folder = Path(tempfile.mkdtemp(prefix="wb-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    init = subprocess.run([bin_dir / "initdb", "-D", folder / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-sync", "--no-instructions"], capture_output=True, text=True, **_as_postgres(folder))
    if init.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    with open(tmp_path / "postgres.log", "ab") as log:  # the server keeps its own copy of the file open
        proc = subprocess.Popen([bin_dir / "postgres", "-D", folder / "data", "-k", folder, "-c", "listen_addresses=",
                                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                                stdout=log, stderr=subprocess.STDOUT, **_as_postgres(folder))
    url = f"postgresql://postgres@/postgres?host={folder}"
    _servers[url] = (proc, folder)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return url
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_postgres(url)
                tail = (tmp_path / "postgres.log").read_text()[-2000:]
                raise RuntimeError(f"PostgreSQL did not start: {tail}") from None
            time.sleep(0.05)


def stop_postgres(url: str) -> None:
    """Stop a server `start_postgres` started (a fast shutdown) and remove its files."""
    proc, folder = _servers.pop(url)
    proc.send_signal(signal.SIGINT)  # a fast shutdown: open sessions ended
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


atexit.register(lambda: [stop_postgres(url) for url in list(_servers)])


def new_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    name = f"votes_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.replace("/postgres?", f"/{name}?")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> str:
    """The test process's one server, started on first use (every module importing this fixture shares it)."""
    if not _shared:
        _shared.append(start_postgres(tmp_path_factory.mktemp("postgres")))
    return _shared[0]


@pytest.fixture
def postgres_url(postgres_server) -> str:
    return new_database(postgres_server)
