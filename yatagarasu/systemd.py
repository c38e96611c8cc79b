"""
systemd's notification protocol (``Type=notify``), written by hand: one datagram per message to
the unix socket named by ``$NOTIFY_SOCKET``, as ``sd_notify(3)`` does.

A path starting with ``@`` is in the abstract namespace (its first byte becomes NUL). Without
``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every call does nothing. Sending
never blocks the reactor (the socket is non-blocking); a failure is logged once, as a warning,
and later failures are silent: readiness is a courtesy to the supervisor, never a reason to stop
serving.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger()

#: the environment variable systemd sets for ``Type=notify`` services
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | bytes:
    """
    :param value: the value of ``$NOTIFY_SOCKET``.
    :returns: the address to ``sendto``: a filesystem path as is, an abstract name
        (``@name``) as bytes starting with NUL.
    :raises ValueError: when it is neither an absolute path nor ``@name`` (systemd's ``vsock:``
        addresses, for one, are not supported).
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"unsupported {NOTIFY_SOCKET} address {value!r}")


class SystemdNotifier:
    """
    Sends state changes to systemd.

    :param address: the value of ``$NOTIFY_SOCKET``, or ``None`` to send nothing.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SystemdNotifier:
        """
        :param environ: the process environment (``os.environ``).
        :returns: a notifier for ``$NOTIFY_SOCKET`` (doing nothing when it is unset or empty).
        """
        return cls(environ.get(NOTIFY_SOCKET))

    @property
    def enabled(self) -> bool:
        """:returns: whether there is a socket to notify (and sending has not failed)."""
        return self.address is not None and not self._failed

    def notify(self, *assignments: str) -> bool:
        """
        Send one datagram of ``VARIABLE=value`` lines, e.g. ``notify("READY=1", "STATUS=...")``.

        :param assignments: the lines, without newlines inside.
        :returns: whether the datagram was sent (``False`` when disabled or when it failed).
        """
        if not self.enabled or not assignments:
            return False
        assert self.address is not None
        try:
            address = socket_address(self.address)
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(assignments).encode() + b"\n", address)
        except (OSError, ValueError) as e:
            self._failed = True
            self.close()
            log.warn(
                "cannot notify systemd at {notify_socket}: {reason}; no further notifications",
                notify_socket=self.address,
                reason=str(e),
            )
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later :meth:`notify` opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
