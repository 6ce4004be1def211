"""Fixtures: a real attnd daemon process (CPU backend) on a temporary unix socket.

The daemon binary is $ATTND_BIN, else <repo>/build/bin/attnd. Tests that need it are skipped (with
the reason) only when that file does not exist. The `attnd` package must be importable: install it
(`pip install ./client/python`); a checkout whose stubs were generated in place
(`python client/python/setup.py build_py`) works too.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

try:
    import attnd  # noqa: F401
except ImportError:  # not installed: use the checkout if its stubs were generated
    src = REPO / "client" / "python" / "src"
    if (src / "attnd" / "v1" / "attnd_pb2.py").exists():
        sys.path.insert(0, str(src))
    import attnd  # noqa: F401,E402  (a clear ImportError says to install the package)


def daemon_binary() -> Path:
    env = os.environ.get("ATTND_BIN")
    return Path(env) if env else REPO / "build" / "bin" / "attnd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One attnd process on a unix socket in a temporary directory; restartable."""

    def __init__(self, binary: Path, workdir: Path, extra_args=(), backend: str = "cpu"):
        self.binary = binary
        self.workdir = workdir
        self.socket_path = workdir / "attnd.sock"
        self.target = "unix://" + str(self.socket_path)
        self.extra_args = list(extra_args)
        self.backend = backend
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "attnd.log"
        self.http_port = 0

    def start(self, timeout: float = 30.0) -> None:
        self.http_port = _free_port()
        args = [str(self.binary), f"--listen={self.target}",
                f"--http_listen=127.0.0.1:{self.http_port}", f"--backend={self.backend}",
                *(["--threads=2"] if self.backend == "cpu" else []), *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_serving(timeout)

    def _wait_serving(self, timeout: float) -> None:
        import attnd

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"attnd exited with {self.proc.returncode} at start:\n{self.log()}")
            if self.socket_path.exists():
                try:
                    with attnd.Client(self.target, timeout=2, retries=0) as c:
                        if c.health() == "SERVING":
                            return
                except attnd.AttndError as e:
                    last = e
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"attnd did not become SERVING in {timeout}s ({last}):\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self._log.close()
        return rc

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def make_daemon(tmp: Path, extra_args=(), backend: str = "cpu") -> Daemon:
    binary = daemon_binary()
    if not binary.exists():
        pytest.skip(f"attnd binary not found at {binary} (build it, or set ATTND_BIN)")
    d = Daemon(binary, tmp, extra_args, backend)
    d.start()
    return d


@pytest.fixture(scope="session")
def daemon():
    """A daemon shared by the tests of the run (each test uses its own sessions and pools)."""
    with tempfile.TemporaryDirectory(prefix="attnd-py-") as tmp:
        d = make_daemon(Path(tmp), ["--session_lease_ms=5000"])
        yield d
        d.stop()


@pytest.fixture()
def own_daemon(tmp_path_factory):
    """A daemon of this test alone (restart tests, lease tests)."""
    tmp = Path(tempfile.mkdtemp(prefix="attnd-py-own-"))
    d = make_daemon(tmp, ["--session_lease_ms=1000"])
    yield d
    d.stop()


@pytest.fixture()
def client(daemon):
    import attnd

    with attnd.Client(daemon.target, timeout=60) as c:
        yield c


_names = itertools.count(1)


@pytest.fixture()
def unique_name(request):
    """A pool name unique across the whole test run ([A-Za-z0-9_.-], at most 64 characters)."""
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"{base}_{os.getpid()}_{next(_names)}"
