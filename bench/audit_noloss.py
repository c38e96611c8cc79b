"""No audit record lost: the real ``twistd -n yatagarasu`` with the ``file`` and ``s3`` sinks
on, driven at a fixed request rate (default 1,000 req/s for 60 s), then stopped with SIGTERM,
then counted.

* moto (SigV4 checking on) holds the served bucket (one 1 KiB object, cached in memory after
  the first request) and the audit bucket the ``s3`` sink exports to
  (``export_interval_seconds: 5``, spooled, uncompressed);
* the load is open-loop and rate-controlled: ``--conns`` keep-alive connections, each sending
  on its own schedule (``rate / conns`` a second; a connection that falls behind sends at once
  to catch up, never more than its schedule), recording every response's ``X-Request-ID``;
  the achieved rate is reported (on a shared machine it may be below the target);
* after SIGTERM (the file sink flushes, the s3 sink spools its last batch and uploads it):
  the lines of the audit file must equal the requests sent, their correlation ids must be the
  ids the responses carried, and the objects in the audit bucket must hold that same set of ids,
  each once.

``skip_probes: true`` keeps the harness's ``/health`` polls out of the records, so every record
is one of the load's requests. Raw output goes to ``bench/results/audit-noloss-<UTC stamp>/``
(git-ignored), with ``results.md``. Examples::

    .venv/bin/python bench/audit_noloss.py                           # 1000 req/s x 60 s
    .venv/bin/python bench/audit_noloss.py --rate 200 --seconds 5    # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import cpu_seconds, dump, machine_facts
from proxylib import log, md_table, results_dir

from devharness.audit_export import exported_objects, s3_export_section
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import proxy_config
from devharness.twistd import clean_exit, start_proxy

DATA_BUCKET = "noloss-data"
AUDIT_BUCKET = "noloss-audit"
PATH = "/data/1k.bin"


class Load:
    """The rate-controlled client: what it sent and what came back."""

    def __init__(self, host: str, port: int, rate: float, seconds: float, conns: int) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.seconds = seconds
        self.conns = conns
        self.ids: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.elapsed = 0.0

    async def run(self) -> None:
        start = time.monotonic() + 0.2
        await asyncio.gather(*(self._connection(i, start) for i in range(self.conns)))
        self.elapsed = time.monotonic() - start

    async def _connection(self, index: int, start: float) -> None:
        interval = self.conns / self.rate
        total = int(self.rate * self.seconds / self.conns)
        request = f"GET {PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            for n in range(total):
                due = start + (n + index / self.conns) * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.sent += 1
                writer.write(request)
                try:
                    await self._response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    self.errors[type(e).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
        finally:
            writer.close()

    async def _response(self, reader: asyncio.StreamReader) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.statuses[status] += 1
        self.ids.append(headers["x-request-id"])


def distinct(ids: list[str]) -> int:
    """:returns: how many different ids ``ids`` holds."""
    return len(set(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--conns", type=int, default=20)
    parser.add_argument("--export-interval", type=float, default=5.0)
    a = parser.parse_args()
    out = results_dir("audit-noloss")
    work = Path(tempfile.mkdtemp(prefix="yatagarasu-noloss-"))
    moto = MotoS3Server(work / "moto").start()
    proxy = None
    try:
        moto.create_bucket(DATA_BUCKET)
        moto.create_bucket(AUDIT_BUCKET)
        moto.put_object(DATA_BUCKET, "1k.bin", b"x" * 1024)
        audit_file = work / "audit" / "audit.log"
        export = s3_export_section(
            moto, AUDIT_BUCKET, work / "spool", export_interval_seconds=a.export_interval
        )
        config = proxy_config(
            moto,
            {"data": DATA_BUCKET},
            logging={"level": "warn"},
            cache={"enabled": True, "cache_layers": ["memory"]},
            audit_log={
                "enabled": True,
                "outputs": ["file", "s3"],
                "skip_probes": True,
                "file": {"path": str(audit_file)},
                "s3_export": export,
            },
        )
        proxy = start_proxy(config, work / "proxy")
        log(f"proxy on {proxy.base_url}; {a.rate:g} req/s for {a.seconds:g} s on {a.conns} conns")
        load = Load(proxy.address, proxy.port, a.rate, a.seconds, a.conns)
        cpu_before = cpu_seconds(proxy.pid)
        asyncio.run(load.run())
        cpu = cpu_seconds(proxy.pid) - cpu_before
        achieved = len(load.ids) / load.elapsed
        log(f"sent {load.sent}, answered {len(load.ids)} in {load.elapsed:.1f} s: {achieved:.0f}/s")
        stopped_at = time.monotonic()
        code = proxy.stop(signal.SIGTERM, timeout=60)
        stop_seconds = time.monotonic() - stopped_at
        lines = audit_file.read_text().splitlines()
        file_ids = [json.loads(line)["correlation_id"] for line in lines]
        objects = exported_objects(moto, AUDIT_BUCKET)
        s3_ids = [r["correlation_id"] for records in objects.values() for r in records]
        spool_left = sorted(p.name for p in (work / "spool").iterdir())
    finally:
        if proxy is not None:
            proxy.kill()
        moto.stop()
    sent = set(load.ids)
    checks = {
        "every request answered": load.sent == len(load.ids) and not load.errors,
        "file lines == requests sent": len(lines) == load.sent,
        "file ids == response ids": sorted(file_ids) == sorted(load.ids),
        "S3 ids == response ids (each once)": sorted(s3_ids) == sorted(load.ids),
        "spool empty after SIGTERM": not spool_left,
        "clean exit": clean_exit(code),
    }
    table = md_table(
        ["what", "value"],
        [
            ["target rate", f"{a.rate:g} req/s x {a.seconds:g} s ({a.conns} connections)"],
            ["requests sent / answered", f"{load.sent} / {len(load.ids)}"],
            ["achieved rate", f"{achieved:.0f} req/s"],
            ["statuses", ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items()))],
            ["client errors", sum(load.errors.values())],
            ["proxy CPU during the load", f"{cpu / load.elapsed * 100:.0f} % of one core"],
            ["file sink lines", len(lines)],
            ["S3 objects / records in them", f"{len(objects)} / {len(s3_ids)}"],
            [
                "distinct ids: sent, file, S3",
                f"{len(sent)}, {len(set(file_ids))}, {len(set(s3_ids))}",
            ],
            ["SIGTERM to exit", f"{stop_seconds:.2f} s"],
            *[[name, "yes" if ok else "**NO**"] for name, ok in checks.items()],
        ],
    )
    facts = machine_facts()
    command = (
        f".venv/bin/python bench/audit_noloss.py --rate {a.rate:g} --seconds {a.seconds:g}"
        f" --conns {a.conns} --export-interval {a.export_interval:g}"
    )
    report = (
        f"{facts.get('cpu', '')} ({facts.get('nproc', '?')} cores, shared with other jobs)\n\n"
        f"`{command}`\n\n{table}\n"
    )
    (out / "results.md").write_text(report)
    dump(out / "results.json", {"checks": checks, "sent": load.sent, "achieved": achieved})
    print(report)
    if not all(checks.values()):
        raise SystemExit("records were lost: " + ", ".join(k for k, v in checks.items() if not v))


if __name__ == "__main__":
    main()
