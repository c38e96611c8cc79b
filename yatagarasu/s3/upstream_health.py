"""What the proxy has recently seen of an upstream, for ``/ready``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UpstreamHealth:
    """
    Counts consecutive failed attempts against one upstream.

    An upstream is ``unhealthy`` after ``threshold`` failed attempts in a row (connect errors,
    timeouts, 5xx) and ``healthy`` again after the next success. Until it has been used it is
    ``unknown``, which counts as usable.

    :ivar upstream: the upstream's origin (``http://127.0.0.1:9000``), its name in ``/ready``.
    """

    upstream: str = ""
    threshold: int = 5
    consecutive_failures: int = 0
    used: bool = False
    last_error: str | None = None

    def record_success(self) -> None:
        """Note a usable answer (any status below 500)."""
        self.used = True
        self.consecutive_failures = 0
        self.last_error = None

    def record_failure(self, reason: str) -> None:
        """
        Note a failed attempt.

        :param reason: a short description (no secrets), shown by ``/ready``.
        """
        self.used = True
        self.consecutive_failures += 1
        self.last_error = reason

    @property
    def status(self) -> str:
        """``healthy``, ``unhealthy`` or ``unknown``."""
        if not self.used:
            return "unknown"
        return "unhealthy" if self.consecutive_failures >= self.threshold else "healthy"

    @property
    def usable(self) -> bool:
        """Whether requests should still be sent there."""
        return self.status != "unhealthy"
