"""Helpers shared by ``bench/cache_bench.py`` and ``bench/auth_bench.py``.

On top of ``benchlib`` (processes, wrk parsing, CPU probes) this adds: an origin with an access
log (to count upstream GETs), the proxy under a given YAML config, a caching nginx, a private
redis-server, wrk with extra arguments (headers, Lua scripts), ``curl -D -`` header checks, a
"thundering herd" client, waiting for the core benchmark (``bench/run.py``) to finish, machine
facts and markdown helpers.

Everything talks to 127.0.0.1 only; every wait and loop is bounded in time or count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

import origin as _origin
from benchlib import (
    PIN,
    REPO,
    TWISTD,
    ForeignLoad,
    Server,
    WrkResult,
    children,
    cpu_seconds,
    loadgen_binary,
    median,
    minor_faults,
    own_cpu_seconds,
    parse_wrk,
    profile_under_load,
    wait_http,
)

from devharness.ports import free_port
from devharness.processes import LoggedProcess

BUCKET = _origin.BUCKET


def exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, ``kill``) raises SystemExit so ``finally`` stops our servers."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def results_dir(name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = REPO / "bench" / "results" / f"{name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- the core benchmark must not run at the same time -------------------------------------------


def foreign_bench_running(pattern: str = "bench/run.py") -> bool:
    cp = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
    mine = {str(os.getpid()), str(os.getppid())}
    return any(p and p not in mine for p in cp.stdout.split())


def wait_for_foreign_bench(until_utc: str, poll: float = 30.0) -> str | None:
    """Wait while ``bench/run.py`` runs, polling every ``poll`` s, at most until ``until_utc``
    (``HH:MM``, today).  Returns a note when we gave up waiting (numbers under foreign load)."""
    hh, mm = (int(x) for x in until_utc.split(":"))
    now = dt.datetime.now(dt.UTC)
    limit = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    announced = False
    for _ in range(10_000):  # bounded: at most ~3.5 days of 30 s polls, limit comes first
        if not foreign_bench_running():
            return None
        if dt.datetime.now(dt.UTC) >= limit:
            note = f"bench/run.py still running at {until_utc} UTC: measured under foreign load"
            log("!! " + note)
            return note
        if not announced:
            log(f"bench/run.py is running; waiting (poll {poll:.0f} s, until {until_utc} UTC)")
            announced = True
        time.sleep(poll)
    return "gave up waiting for bench/run.py"


# -- machine facts -----------------------------------------------------------------------------


def facts_md(facts: dict[str, Any], pinning: str) -> str:
    return (
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), Linux {facts['kernel']}, "
        f"{facts['python']}, Twisted {facts['twisted']}, {facts['nginx']}, "
        f"{facts['redis'].split(' sha=')[0]}, git {facts['git']}, {facts['date_utc']}. "
        f"Pinning: {pinning}."
    )


# -- origin with an access log -----------------------------------------------------------------


class LoggedOrigin(_origin.Origin):
    """``bench/origin.py``'s nginx, with an access log so upstream GETs can be counted."""

    def __init__(self, extra: dict[str, int] | None = None, workers: int = 1) -> None:
        super().__init__(workers=workers, access_log=True)
        data = self.tmp / "data" / BUCKET
        for key, size in (extra or {}).items():
            path = data / key
            path.write_bytes(os.urandom(size))
            os.chmod(path, 0o644)

    @property
    def access_log(self) -> Path:
        return self.tmp / "access.log"

    def count(self, key: str) -> int:
        """Requests for ``/<bucket>/<key>`` in the access log so far (any method)."""
        try:
            text = self.access_log.read_text(errors="replace")
        except OSError:
            return -1
        return len(re.findall(rf'"[A-Z]+ /{BUCKET}/{re.escape(key)}[ ?]', text))


# -- the proxy ---------------------------------------------------------------------------------


BUCKET_YAML = (
    "  - {{name: {name}, path_prefix: /{name}, {extra}s3: {{bucket: {bucket}, region: us-east-1, "
    'endpoint: "{endpoint}", access_key: AKIDBENCH, '
    "secret_key: benchsecretbenchsecretbenchsecret}}}}\n"
)


def bucket_yaml(name: str, endpoint: str, extra: str = "", bucket: str = BUCKET) -> str:
    return BUCKET_YAML.format(
        name=name, endpoint=endpoint, bucket=bucket, extra=f"{extra}, " if extra else ""
    )


def start_proxy(
    name: str,
    config: str,
    out: Path,
    probe: str,
    port: int,
    twistd: str = TWISTD,
    pin: bool = True,
) -> Server:
    cfg = out / f"{name}.yaml"
    cfg.write_text(config)
    check = subprocess.run(
        [twistd, "-n", "--pidfile=", "yatagarasu", "--config", str(cfg), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode != 0:
        raise RuntimeError(f"{name}: config check failed: {check.stdout}{check.stderr}")
    argv = [twistd, "-n", "--pidfile=", "yatagarasu", "--config", str(cfg)]
    srv = Server(name, argv, port, out / f"{name}.log", probe=probe, timeout=60, pin=pin)
    log(f"{name} on {srv.url} pid {srv.pid}: {' '.join(argv)}")
    return srv


# -- a caching nginx ---------------------------------------------------------------------------

# tcp_nopush on stalls proxy_cache hits of 100 KiB ~40 ms (delayed ACK): 6k vs 16k req/s
NGINX_CACHE_SERVER = """\
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=1h
                     use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}"""


class NginxCache:
    """nginx ``proxy_cache`` (1 worker) in front of the origin, on the server CPU."""

    def __init__(self, origin_port: int, probe: str) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="yatagarasu-nginxcache-"))
        os.chmod(self.tmp, 0o755)
        for sub in ("cache", "proxy", "client_body", "fastcgi", "uwsgi", "scgi"):
            (self.tmp / sub).mkdir()
            os.chmod(self.tmp / sub, 0o777)  # nginx workers run as "nobody"
        self.conf = self.tmp / "nginx.conf"
        server = NGINX_CACHE_SERVER.format(tmp=self.tmp, port=self.port, origin=origin_port)
        self.conf.write_text(_origin.nginx_conf(self.tmp, server, tcp_nopush=False))
        self.process = LoggedProcess(
            [*PIN["server"], "nginx", "-p", str(self.tmp), "-c", str(self.conf)],
            self.tmp / "nginx-stderr.log",
            cwd=self.tmp,
        )
        try:
            wait_http(self.url + probe, timeout=10.0, proc=self.process.proc)
        except Exception:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        self.process.stop(signal.SIGQUIT, 10.0)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the peer: nginx-s3-gateway ---------------------------------------------------------------

PEER_DIR = Path(os.environ.get("PEER_DIR", "/work/shared/peers/nginx-s3-gateway"))
#: a git snapshot of nginxinc/nginx-s3-gateway (the search tool's ``fetch`` puts one here)
GATEWAY_SNAPSHOT = Path(
    os.environ.get("GATEWAY_SNAPSHOT", "/work/.mirror/nginxinc+nginx-s3-gateway/repo")
)
#: our object names -> the ones ``seed_moto.py`` puts in the gateway's bucket
GATEWAY_KEYS = {"1k": "small-1k.bin", "100k": "medium-100k.bin"}


class Gateway:
    """
    nginxinc/nginx-s3-gateway (NGINX OSS + njs, SigV4 to a moto of its own) started with the
    peer's ``run.sh up``, its ``proxy_cache`` on as the gateway ships it (``PROXY_CACHE_VALID_OK``
    1h), ``worker_processes 1`` ("per process"), its access log on (its default).  With
    pinning, nginx (master, worker, cache helpers) is moved to the server CPU.
    """

    def __init__(self, workers: int = 1) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="yatagarasu-gateway-"))
        os.chmod(self.tmp, 0o755)  # nginx workers run as "nobody"
        self.env = dict(
            os.environ,
            WORK_DIR=str(self.tmp / "work"),
            GW_PORT=str(self.port),
            S3_PORT=str(free_port()),
            GW_WORKERS=str(workers),
            MOTO_VENV=str(REPO / ".venv"),  # moto[server] + boto3 are dev extras
            PROXY_CACHE_VALID_OK="1h",
        )
        self.command = (
            f"WORK_DIR=... GW_PORT={self.port} GW_WORKERS={workers} MOTO_VENV=.venv "
            f"{PEER_DIR / 'run.sh'} up {GATEWAY_SNAPSHOT}"
        )
        cp = subprocess.run(
            [str(PEER_DIR / "run.sh"), "up", str(GATEWAY_SNAPSHOT)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if cp.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise RuntimeError(f"nginx-s3-gateway did not start: {cp.stderr[-2000:]}")
        self.pid = int((self.tmp / "work" / "nginx.pid").read_text())
        if PIN["server"]:
            cpu = PIN["server"][-1]
            for pid in [self.pid, *children(self.pid)]:
                subprocess.run(["taskset", "-p", "-c", cpu, str(pid)], capture_output=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.tmp / "work" / "nginx.conf"

    def close(self) -> None:
        subprocess.run(
            [str(PEER_DIR / "run.sh"), "down"], env=self.env, capture_output=True, timeout=60
        )
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- curl header checks ------------------------------------------------------------------------


def curl_headers(url: str, headers: Sequence[str] = ()) -> tuple[int, dict[str, str], str]:
    """``curl -s -o /dev/null -D -``: (status, lower-cased headers, the command line)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "20"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    lines = out.replace("\r", "").split("\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, " ".join(a if " " not in a else repr(a) for a in argv)


def warm(
    url: str, headers: Sequence[str] = (), tries: int = 50, header: str = "x-cache"
) -> tuple[int, str, list[str]]:
    """GET until ``X-Cache: HIT`` (bounded: ``tries`` x 0.1 s); returns (status, x-cache, seen).

    :param header: the cache status header (nginx-s3-gateway's is ``x-cache-status``).
    """
    seen: list[str] = []
    status, xc = 0, ""
    for _ in range(tries):
        status, hdrs, _cmd = curl_headers(url, headers)
        xc = hdrs.get(header, "")
        seen.append(f"{status} {xc}")
        if xc == "HIT":
            break
        time.sleep(0.1)
    return status, xc, seen


# -- wrk ---------------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    cmd: str
    result: WrkResult
    cpu_util: float
    foreign_cores: float
    origin_delta: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: the closed-loop load generators: wrk, and bench/loadgen.c (the same loop, with the bodies
#: dropped in the kernel, so that it takes less of the cores it shares with the server)
CLIENTS = ("wrk", "loadgen")


def wrk_cmd(
    url: str, conns: int, seconds: int, extra: Sequence[str] = (), client: str = "wrk"
) -> list[str]:
    if client == "loadgen":
        if extra:
            raise ValueError(f"loadgen takes no wrk options: {extra}")
        return [loadgen_binary(), "-c", str(conns), "-d", str(seconds), url]
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *extra, url]


def run_wrk(
    target: str,
    url: str,
    conns: int,
    seconds: int,
    server_pid: int,
    ours: Sequence[int],
    extra: Sequence[str] = (),
    client: str = "wrk",
    pin: bool = True,
) -> Run:
    """
    One run of the load generator (``client``) on ``url``, pinned to the load CPUs unless
    ``pin`` is false; the server's CPU and page faults, the client's CPU and foreign load.
    """
    cmd = wrk_cmd(url, conns, seconds, extra, client)
    cpu0, faults0 = cpu_seconds(server_pid), minor_faults(server_pid)
    client0 = own_cpu_seconds()
    foreign = ForeignLoad(list(ours))
    raw = subprocess.run(
        [*(PIN["load"] if pin else ()), *cmd], capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    cpu, faults = cpu_seconds(server_pid) - cpu0, minor_faults(server_pid) - faults0
    run = Run(target, shlex.join(cmd), parse_wrk(raw), cpu / seconds, foreign.cores())
    run.extra["minor_faults"] = faults
    # wrk's CPU (reaped by now), with this process's own, which is next to nothing
    run.extra["client_cores"] = (own_cpu_seconds() - client0) / seconds
    return run


def add_wrk_options(
    parser: argparse.ArgumentParser,
    *,
    seconds: int = 15,
    runs: int = 3,
    conns: int = 50,
    warmup: int | None = None,
    wait_until: str | None = None,
    pin: bool = True,
) -> None:
    """
    The options every wrk benchmark takes: ``--seconds``, ``--runs``, ``--conns``;
    ``--no-pin`` unless ``pin`` is false (a benchmark that never pins); ``--warmup-seconds``
    when ``warmup`` is given; ``--no-wait`` and ``--wait-until`` (for
    :func:`wait_for_foreign_bench`) when ``wait_until`` is.
    """
    parser.add_argument("--seconds", type=int, default=seconds, help="per wrk run")
    parser.add_argument("--runs", type=int, default=runs, help="rounds over the targets")
    parser.add_argument("--conns", type=int, default=conns, help="wrk connections")
    if warmup is not None:
        parser.add_argument("--warmup-seconds", type=int, default=warmup)
    if pin:
        parser.add_argument("--no-pin", action="store_true", help="no taskset CPU pinning")
    if wait_until is not None:
        parser.add_argument("--no-wait", action="store_true", help="don't wait for bench/run.py")
        parser.add_argument("--wait-until", default=wait_until, help="UTC HH:MM")


def wrk_rounds(
    servers: Mapping[str, Any],
    path: str,
    a: argparse.Namespace,
    ours: Sequence[int],
    order: Sequence[str] | None = None,
) -> dict[str, list[Run]]:
    """
    ``a.runs`` rounds of ``wrk -c a.conns -d a.seconds`` on ``path`` of every server, in
    A B ... B A order (each round reverses the previous one, so drift hits every target alike).

    :param servers: target name -> anything with ``url`` and ``pid``.
    :param order: the targets of the first round (default: ``servers``' order).
    """
    targets = list(order or servers)
    runs: dict[str, list[Run]] = {t: [] for t in targets}
    for i in range(a.runs):
        for kind in targets if i % 2 == 0 else reversed(targets):
            server = servers[kind]
            run = run_wrk(kind, server.url + path, a.conns, a.seconds, server.pid, ours)
            runs[kind].append(run)
            log(f"{kind} run {i + 1}: {run.result.rps:.0f} req/s")
    return runs


def summarize(runs: Sequence[Run]) -> dict[str, float]:
    return {
        "rps": median([r.result.rps for r in runs]),
        "p50_ms": median([r.result.p50_ms for r in runs]),
        "p99_ms": median([r.result.p99_ms for r in runs]),
        "cpu_util": median([r.cpu_util for r in runs]),
        "foreign_max": max(r.foreign_cores for r in runs),
        "errors": sum(r.result.errors for r in runs),
        "non2xx": sum(r.result.non2xx for r in runs),
        "runs": len(runs),
    }


# -- thundering herd ---------------------------------------------------------------------------


def herd(
    port: int, path: str, n: int = 100, timeout: float = 60.0, headers: Sequence[str] = ()
) -> dict[str, Any]:
    """Open ``n`` connections, then send one GET for ``path`` on each back to back.

    :returns: elapsed seconds (first send to last complete response), statuses, X-Cache values,
        body sizes.  Connections use ``Connection: close`` so EOF ends each response.
    """
    extra = "".join(f"{h}\r\n" for h in headers)
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytearray] = {}
    t0 = time.monotonic()
    for s in socks:
        s.sendall(req)
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s.fileno()] = bytearray()
    open_ = n
    deadline = t0 + timeout
    last = t0
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                bufs[sock.fileno()] += data
            else:
                sel.unregister(sock)
                open_ -= 1
                last = time.monotonic()
    elapsed = last - t0
    statuses: Counter[str] = Counter()
    xcache: Counter[str] = Counter()
    sizes: Counter[int] = Counter()
    for buf in bufs.values():
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        statuses[lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "none"] += 1
        hdrs = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        xcache[hdrs.get("x-cache", "-")] += 1
        sizes[len(body)] += 1
    for s in socks:
        s.close()
    sel.close()
    return {
        "n": n,
        "unfinished": open_,
        "seconds": round(elapsed, 4),
        "status": dict(statuses),
        "x_cache": dict(xcache),
        "body_sizes": {str(k): v for k, v in sizes.items()},
    }


# -- py-spy ------------------------------------------------------------------------------------


def profile(
    name: str, url: str, pid: int, out: Path, seconds: int = 10, extra: Sequence[str] = ()
) -> str | None:
    """py-spy (``--gil``) on ``pid`` under ``wrk -c50``; returns the summary text."""
    return profile_under_load(name, pid, out, seconds, wrk_cmd(url, 50, seconds + 4, extra))


# -- markdown ----------------------------------------------------------------------------------


def fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def pct(x: float, y: float) -> str:
    return "-" if not y or x != x or y != y else f"{100 * x / y:.0f} %"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
