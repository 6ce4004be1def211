"""The process's connection to the daemon's peer socket (attnd.proto, "Identity").

Over it the kernel tells the daemon who this process is (SO_PEERCRED); the daemon answers with a
peer key that every call carries as ``x-attnd-peer`` metadata (unary sessions are bound to it),
and shared-memory file descriptors travel over it (SCM_RIGHTS) to be registered as buffers. The
connection stays open while the process uses the daemon; when it closes (the process exits),
the daemon releases the unary sessions opened with its key.

The clients (attnd.Client, attnd.aio.AsyncClient) make one per unix-socket target themselves:
``<socket path>.peer``. It connects lazily and reconnects after a daemon restart.
"""

from __future__ import annotations

import array
import select
import socket
import threading
from typing import Optional

__all__ = ["PeerLink", "default_peer_path", "PEER_METADATA_KEY"]

PEER_METADATA_KEY = "x-attnd-peer"
_GREETING = "attnd-peer 1 "
_REPLY_TIMEOUT_S = 10.0


def default_peer_path(target: str) -> Optional[str]:
    """"unix:///tmp/attnd.sock" or "unix:rel/path" -> "<path>.peer"; None for other targets."""
    if target.startswith("unix://"):
        path = target[len("unix://"):]
    elif target.startswith("unix:"):
        path = target[len("unix:"):]
    else:
        return None
    return path + ".peer" if path else None


class PeerLink:
    """A lazily opened, reconnecting peer connection (thread-safe)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._key = ""

    def _read(self, sock: socket.socket) -> str:
        ready, _, _ = select.select([sock], [], [], _REPLY_TIMEOUT_S)
        if not ready:
            raise ConnectionError("the daemon's peer socket did not answer")
        data = sock.recv(512)
        if not data:
            raise ConnectionError("the daemon closed the peer connection")
        return data.decode("utf-8", "replace").rstrip("\n")

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._key = ""

    def _connect_locked(self) -> None:
        if self._sock is not None:
            # Still connected? A closed daemon shows as readable end-of-file or a hang-up.
            ready, _, _ = select.select([self._sock], [], [], 0)
            if not ready:
                return
            self._close_locked()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(self.path)
            greeting = self._read(sock)
        except OSError:
            sock.close()
            raise
        if not greeting.startswith(_GREETING):
            sock.close()
            raise ConnectionError(f"the peer socket refused: {greeting}")
        self._sock = sock
        self._key = greeting[len(_GREETING):]

    def key(self) -> str:
        """The peer key ("" when the socket cannot be reached: calls then carry none)."""
        with self._lock:
            try:
                self._connect_locked()
            except OSError:
                return ""
            return self._key

    def send_fd(self, fd: int) -> str:
        """Sends ``fd`` (a memfd sealed against shrinking; not taken) and returns the daemon's
        one-time fd token. Raises ConnectionError when the socket cannot be reached, ValueError
        with the daemon's reason when it refuses the descriptor."""
        with self._lock:
            self._connect_locked()
            try:
                self._sock.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", [fd]).tobytes())])
                reply = self._read(self._sock)
            except OSError:
                self._close_locked()
                raise
        if reply.startswith("ok "):
            return reply[3:]
        raise ValueError("the daemon refused the descriptor: " +
                         (reply[6:] if reply.startswith("error ") else reply))

    def close(self) -> None:
        with self._lock:
            self._close_locked()
