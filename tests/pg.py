"""A throw-away PostgreSQL cluster for tests: initdb in a temporary directory, pg_ctl on a free loopback port.

CI and developers run the PostgreSQL tests the same way::

    python -m tests.pg -- python -m pytest tests/unit/test_store.py

starts a fresh cluster, runs the command with ``SVDPIPE_TEST_PG_DSN`` set to it, and stops and deletes the
cluster afterwards (also on Ctrl-C or a failing command, whose exit status it returns). Tests that need to
stop and restart the database (outage tests) start a private :class:`PgCluster` of their own.

initdb refuses to run as root, so as root the cluster is created and run as the ``postgres`` user (Debian's
``postgresql`` package creates it), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DSN_ENV = "SVDPIPE_TEST_PG_DSN"


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only (no Unix socket)."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        bin_dir = bin_dir or find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (no initdb): apt-get install postgresql")
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.root = Path(tempfile.mkdtemp(prefix="svdpipe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root)

    def start(self) -> None:
        # fsync off: a test cluster need not survive a power cut, and it is much faster on a busy disk.
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A started cluster, stopped and deleted on exit."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m tests.pg -- <command> [args...]", file=sys.stderr)
        return 2
    # SIGTERM (a cancelled CI job) must still stop the cluster: turn it into an exception that unwinds.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with running_cluster() as cluster:
        print(f"tests.pg: PostgreSQL on {cluster.dsn} (data in {cluster.root})", flush=True)
        started = time.monotonic()
        code = subprocess.call(argv, env={**os.environ, DSN_ENV: cluster.dsn})
        print(f"tests.pg: command exited {code} after {time.monotonic() - started:.0f} s; stopping", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
