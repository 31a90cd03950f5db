"""Interrupting a collective that SIGINT cannot stop.

A rank blocked inside a gloo collective does not see SIGINT until the collective times out
(the wait is in C++).  To stop it at once, each engine runs a small watchdog thread that, on
request, shuts down the sockets of its process group: the blocked collective then fails
immediately ("Connection closed by peer").  The group is dead afterwards;
``cluster.recover()`` builds a new one.

The sockets are recorded by :func:`record_pg_sockets` right after the group is built.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

_PG_SOCKETS: set[int] = set()  # socket inodes opened by init_process_group
_WATCHDOG: dict = {}


def socket_inodes() -> dict[int, int]:
    """inode -> fd of every socket this process holds now."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                found[int(link[8:-1])] = int(fd)
    return found


def _tcp_inodes() -> set[int]:
    """Inodes of established TCP connections (gloo's pairs are such connections)."""
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError, StopIteration, IndexError, ValueError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "01":  # ESTABLISHED: never a listener (gloo aborts on those)
                    found.add(int(cols[9]))
    return found


def abort_collectives() -> int:
    """Shut down this rank's process-group sockets; returns how many."""
    n = 0
    for inode, fd in socket_inodes().items():
        if inode in _PG_SOCKETS:
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
                n += 1
    return n


def start_watchdog(addr: str, token: str) -> int:
    """Start (once per engine) the thread that aborts collectives on request; its port."""
    if "sock" in _WATCHDOG:  # already running: a new connect() may bring a new token
        _WATCHDOG["token"] = token
        return _WATCHDOG["port"]
    srv = socket.create_server((addr, 0), backlog=8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed by stop_watchdog(): the engine is exiting
                return
            with conn, contextlib.suppress(OSError, UnicodeDecodeError):  # a client gone, or garbage: wait for the next
                conn.settimeout(5)
                if conn.recv(256).decode().strip() == f"{_WATCHDOG['token']} abort":
                    conn.sendall(f"{abort_collectives()}\n".encode())

    _WATCHDOG.update(sock=srv, port=srv.getsockname()[1], token=token)
    threading.Thread(target=serve, name="tp-watchdog", daemon=True).start()
    return _WATCHDOG["port"]


def record_pg_sockets(before: dict[int, int]) -> None:
    """Remember the TCP connections opened since ``before`` (``socket_inodes()``)."""
    _PG_SOCKETS.clear()
    _PG_SOCKETS.update((socket_inodes().keys() - before.keys()) & _tcp_inodes())


def stop_watchdog() -> None:
    """Close the watchdog's listening socket (at engine exit)."""
    with contextlib.suppress(KeyError, OSError):  # KeyError: no watchdog was started
        _WATCHDOG.pop("sock").close()
