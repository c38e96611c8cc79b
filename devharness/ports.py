"""The loopback address every helper uses, and free TCP ports on it."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """
    Ask the kernel for a currently unused TCP port on ``host``.

    :param host: address to probe (loopback only in this project).
    :returns: a port number that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """
    Tell whether ``host:port`` can be bound right now.

    :param port: TCP port.
    :param host: address.
    :returns: ``True`` when nothing listens there.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
