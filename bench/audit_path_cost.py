"""CPU per request of the audit path alone, in one process: build the record from a finished
request, redact it, hand it to the ``file`` sink (serialized as it is queued, appended in
batches of 1000 by a synchronous runner: the write system calls are counted too).

A steadier number than a whole-proxy A/B on a shared machine (``bench/audit_bench.py``): it
counts the process's CPU time (``time.process_time``), not wall time, and nothing else runs in
the process. It leaves out what only the real process has (the writer thread's hand-off, the
garbage collector's view of a busy server); ``audit_bench.py`` measures those. Example::

    .venv/bin/python bench/audit_path_cost.py --records 100000 --repeat 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.testing import MemoryReactorClock
from twisted.web.http_headers import Headers

from yatagarasu.audit.file import FileSink, FileSinkSettings, run_now
from yatagarasu.audit.record import Redaction
from yatagarasu.audit.trail import AuditTrail
from yatagarasu.web.site import audit_record


class FinishedRequest:
    """What :func:`audit_record` reads from a ``ProxyRequest``: a 1 KiB memory hit."""

    method = b"GET"
    cache_status = b"HIT"
    started = time.time()
    request_id = "3f1c2a4e-1b2c-4d5e-8f90-123456789abc"
    client_address = "127.0.0.1"
    subject = None
    bucket = "bench"
    object_key = "1k.bin"
    path = b"/bench/1k.bin"
    code = 200
    sentLength = 1024
    requestHeaders = Headers({b"user-agent": [b"wrk/4.1.0"], b"host": [b"127.0.0.1:8080"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    a = parser.parse_args()
    request: Any = FinishedRequest()
    directory = Path(tempfile.mkdtemp(prefix="yatagarasu-audit-path-"))
    settings = FileSinkSettings(path=str(directory / "audit.log"))
    sink = FileSink(settings, MemoryReactorClock(), run_now)
    [service] = sink.services()
    trail = AuditTrail([sink], Redaction(()))
    results = []
    for _ in range(a.repeat):
        start = time.process_time()
        for _ in range(a.records):
            trail.emit(audit_record(request, 0.0012345))
        service.stopService()  # the last batch, and the file closed (synchronously here)
        results.append((time.process_time() - start) / a.records * 1e6)
        (directory / "audit.log").unlink()
    results.sort()
    print(
        f"audit path, CPU per request: min {results[0]:.2f} µs, median"
        f" {results[len(results) // 2]:.2f} µs ({a.records} records x {a.repeat})"
    )


if __name__ == "__main__":
    main()
