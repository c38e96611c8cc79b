"""Instructions per uncached 1 KiB GET (the MISS path), counted by valgrind's callgrind: a
number that does not depend on what else runs on the machine.

Each target runs under ``valgrind --tool=callgrind --instr-atstart=no`` in front of the bench
origin (``bench/origin.py``, nginx): after a warm-up the count is switched on
(``callgrind_control -i on``), ``--requests`` GETs of ``/bench/1k.bin`` are sent over
``--connections`` keep-alive connections (round robin, one request in flight), the count is
switched off and dumped. Targets:

* ``relay``   -- ``bench/bare_relay.py`` (Agent + persistent pool, no signing or logging)
* ``proxy``   -- this checkout's ``twistd yatagarasu``, ``logging: {level: warn}`` (as run.py)
* ``proxy_default`` -- the same with the default configuration (access log at info)
* ``before`` / ``before_default`` -- the proxy of ``--before-root`` (another checkout with its
  own ``.venv``: the code before a change), same two configurations

Example::

    .venv/bin/python bench/miss_cpu.py --before-root /work/main
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import PYTHON, REPO, dump, wait_http
from origin import Origin
from proxylib import exit_on_sigterm, log, results_dir

from devharness.ports import free_port
from devharness.processes import LoggedProcess

KEY = "/bench/1k.bin"
PROXY_CONFIG = """\
server: {{address: 127.0.0.1, port: {port}}}
{logging}buckets:
  - name: bench
    path_prefix: /bench
    s3:
      bucket: bench
      region: us-east-1
      endpoint: "{endpoint}"
      access_key: AKIDBENCH
      secret_key: benchsecretbenchsecretbenchsecret
"""


def argv_for(target: str, port: int, origin: Origin, out: Path, before: Path | None) -> list[str]:
    if target == "relay":
        return [PYTHON, "bench/bare_relay.py", "--port", str(port), "--upstream", origin.url]
    root = before if target.startswith("before") else REPO
    assert root is not None, "--before-root is needed for the before targets"
    cfg = out / f"{target}.yaml"
    quiet = not target.endswith("default")
    cfg.write_text(
        PROXY_CONFIG.format(
            port=port,
            endpoint=origin.url,
            logging="logging: {level: warn}\n" if quiet else "",
        )
    )
    python = str(root / ".venv" / "bin" / "python")
    return [python, str(root / ".venv" / "bin" / "twistd"), "-n", "--pidfile=", "yatagarasu",
            "--config", str(cfg)]  # fmt: skip


def send(connections: list[http.client.HTTPConnection], requests: int) -> None:
    for i in range(requests):
        conn = connections[i % len(connections)]
        conn.request("GET", KEY)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200 or len(body) != 1024:
            raise RuntimeError(f"unexpected answer {response.status}, {len(body)} bytes")


def total_instructions(dump_file: Path) -> int:
    for line in dump_file.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump_file}")


def measure(target: str, args: argparse.Namespace, origin: Origin, out: Path) -> float:
    port = free_port()
    base = out / f"callgrind-{target}.out"
    before = Path(args.before_root) if args.before_root else None
    cwd = before if target.startswith("before") and before else REPO
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={base}",
        *argv_for(target, port, origin, out, before),
    ]
    process = LoggedProcess(argv, out / f"{target}.log", cwd=cwd, append=False, new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}{KEY}", timeout=args.start_timeout, proc=process.proc)
        connections = [
            http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            for _ in range(args.connections)
        ]
        send(connections, args.warmup)
        pid = str(process.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, timeout=120)
        started = time.monotonic()
        send(connections, args.requests)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, timeout=120)
        subprocess.run(["callgrind_control", "-d", pid], check=True, timeout=120)
        elapsed = time.monotonic() - started
        for conn in connections:
            conn.close()
        # the dump asked for is part 1 (``.out.1``); the file written at exit has nothing
        per_request = total_instructions(base.with_name(base.name + ".1")) / args.requests
        log(f"{target}: {per_request:,.0f} instructions per request ({elapsed:.0f} s)")
        return per_request
    finally:
        process.stop()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--targets", default="relay,proxy,proxy_default")
    p.add_argument("--before-root", help="another checkout: adds before,before_default")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--start-timeout", type=float, default=300.0)
    args = p.parse_args()
    exit_on_sigterm()
    targets = [t for t in args.targets.split(",") if t]
    if args.before_root:
        targets += ["before", "before_default"]
    out = results_dir("miss-cpu")
    results: dict[str, float] = {}
    with Origin() as origin:
        for target in targets:
            results[target] = measure(target, args, origin, out)
    relay = results.get("relay")
    lines = [
        f"requests {args.requests} after {args.warmup} warm-up, {args.connections} connections",
        "",
        "| target | instructions / request | relay / target |",
        "|---|---:|---:|",
    ]
    for target, value in results.items():
        ratio = f"{relay / value:.2f}x" if relay else "n/a"
        lines.append(f"| {target} | {value:,.0f} | {ratio} |")
    table = "\n".join(lines)
    dump(out / "results.json", {"args": vars(args), "instructions_per_request": results})
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
