"""Shared helpers for the benchmark scripts: processes, wrk/curl runs, memory probes.

Everything here talks to 127.0.0.1 only and every wait is bounded in time.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from devharness.processes import LoggedProcess

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
TWISTD = str(REPO / ".venv" / "bin" / "twistd")


# -- CPU pinning -------------------------------------------------------------------------------

#: ``taskset`` prefixes: the server under test gets the last CPU to itself; nginx and the load
#: generators (wrk, curl, slow clients) share the others.  Empty = no pinning.
PIN: dict[str, list[str]] = {"server": [], "load": []}


def set_pinning(enabled: bool) -> str:
    n = os.cpu_count() or 1
    if not enabled or n < 2 or shutil.which("taskset") is None:
        PIN["server"], PIN["load"] = [], []
        return "no CPU pinning"
    last = n - 1
    rest = f"0-{last - 1}" if last > 1 else "0"
    PIN["server"], PIN["load"] = ["taskset", "-c", str(last)], ["taskset", "-c", rest]
    return f"server under test on CPU {last}; nginx, wrk, curl and slow clients on CPU {rest}"


# -- tools and ports ---------------------------------------------------------------------------


def require_tools() -> None:
    """Install nginx-light and wrk with apt when they are missing (Debian, root)."""
    missing = [
        pkg
        for tool, pkg in (("nginx", "nginx-light"), ("wrk", "wrk"))
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=600, check=True)
        subprocess.run(cmd, env=env, timeout=600, check=True)
    # The Debian package may start the system nginx; we never use or touch it.


def loadgen_binary() -> str:
    """
    ``bench/loadgen.c`` built (``cc -O2``) into ``bench/results/.bin/loadgen`` when the binary
    is missing or older than its source; installs gcc with apt when there is no ``cc``.
    """
    source = REPO / "bench" / "loadgen.c"
    binary = REPO / "bench" / "results" / ".bin" / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return str(binary)
    if shutil.which("cc") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "gcc", "libc6-dev"]
        subprocess.run(cmd, env=env, timeout=600, check=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(source)], timeout=120, check=True)
    return str(binary)


def http_get(
    url: str, timeout: float = 5.0, method: str = "GET"
) -> tuple[int, dict[str, str], int]:
    """One request; returns (status, headers, body length).  Reads at most 1 MiB of body."""
    m = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    if not m:
        raise ValueError(url)
    conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
    try:
        conn.request(method, m.group(3) or "/")
        resp = conn.getresponse()
        body = resp.read(1024 * 1024) if method != "HEAD" else b""
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, len(body)
    finally:
        conn.close()


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> int:
    """Poll ``url`` until it answers (any status); returns the status.  Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
        try:
            return http_get(url, timeout=2.0, method="HEAD")[0]
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError(f"{url} not answering after {timeout}s: {last}")


# -- server processes --------------------------------------------------------------------------


class Server:
    """A child process listening on ``port``; stopped with SIGTERM then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log: Path,
        probe: str = "/bench/1k.bin",
        timeout: float = 30.0,
        pin: bool = True,
    ) -> None:
        """:param pin: on the server CPU (when pinning); ``False``: anywhere (worker processes)."""
        self.name, self.port, self.argv = name, port, list(argv)
        prefix = PIN["server"] if pin else []
        self.process = LoggedProcess(
            [*prefix, *self.argv], log, cwd=REPO, append=False, new_session=True
        )
        try:
            wait_http(self.url + probe, timeout=timeout, proc=self.process.proc)
        except Exception:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(signal.SIGTERM, timeout=15)


# -- machine facts -----------------------------------------------------------------------------


def _first_line(*argv: str) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (cp.stdout + cp.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine_facts() -> dict[str, Any]:
    """CPU, kernel, tool versions and the git commit, for the results of every benchmark."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    twisted_v = subprocess.run(
        [PYTHON, "-c", "import twisted; print(twisted.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": _first_line(PYTHON, "-V"),
        "twisted": twisted_v,
        "nginx": _first_line("nginx", "-v"),
        "redis": _first_line("redis-server", "--version"),
        "wrk": _first_line("wrk", "-v"),
        "curl": _first_line("curl", "--version"),
        "git": _first_line("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
    }


# -- memory probes -----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def children(pid: int) -> list[int]:
    """:returns: the direct children of ``pid`` (nginx workers, proxy workers)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stats(pid: int) -> list[list[str]]:
    """
    :returns: the ``/proc/PID/stat`` fields after the command name (``state`` first) of
        ``pid`` and of its direct children (nginx workers, proxy workers) that still run.
    """
    stats = []
    for p in [pid, *children(pid)]:
        try:
            stats.append(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split())
        except OSError:
            continue
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its direct children (nginx workers)."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in _stats(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults so far of ``pid`` and its direct children (fresh pages touched)."""
    return sum(int(fields[7]) for fields in _stats(pid))


def busy_cpu_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU of this process plus its reaped children (wrk, curl, slow clients)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """CPU used on the machine by processes that are not ours (other jobs sharing the box).

    ``ours`` are the pids of our servers (and nginx, children included).
    """

    def __init__(self, ours: Sequence[int]) -> None:
        self.ours = list(ours)
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        mine = own_cpu_seconds() + sum(cpu_seconds(p) for p in self.ours)
        return time.monotonic(), busy_cpu_seconds(), mine

    def cores(self) -> float:
        """Average foreign cores busy since construction (or the last call)."""
        now = self._sample()
        wall = max(now[0] - self._start[0], 1e-3)
        foreign = (now[1] - self._start[1]) - (now[2] - self._start[2])
        self._start = now
        return max(0.0, foreign / wall)


def wait_quiet(ours: Sequence[int], threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait (bounded) until foreign CPU over 1 s is below ``threshold`` cores.

    :returns: (seconds waited, foreign cores in the last sample)
    """
    t0 = time.monotonic()
    probe = ForeignLoad(ours)
    while True:
        time.sleep(1.0)
        load = probe.cores()
        waited = time.monotonic() - t0
        if load < threshold or waited >= max_wait:
            return waited, load


def sockstat() -> dict[str, int]:
    """/proc/net/sockstat TCP line: inuse, orphan, tw, alloc, mem (mem in pages -> bytes too)."""
    out: dict[str, int] = {}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            out = {parts[i]: int(parts[i + 1]) for i in range(0, len(parts), 2)}
            out["mem_bytes"] = out.get("mem", 0) * os.sysconf("SC_PAGE_SIZE")
    return out


_SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def ss_skmem(
    pid: int, local_port: int | None = None, peer_port: int | None = None
) -> dict[str, int]:
    """Sum ``ss -tmnp`` skmem over ``pid``'s established sockets, filtered by port.

    ``local_port``: the server's client-facing sockets; ``peer_port``: its upstream sockets.
    r = receive queue memory, t = transmit memory, w = queued for transmit; all bytes.
    Recv-Q/Send-Q (bytes not read by the app / not acked by the peer) are summed too.
    """
    out = subprocess.run(
        ["ss", "-tmnpH", "state", "established"], capture_output=True, text=True, timeout=20
    ).stdout
    total = {"sockets": 0, "r": 0, "t": 0, "w": 0, "recv_q": 0, "send_q": 0}
    record: list[str] = []
    records: list[str] = []
    for line in out.splitlines():
        if line and not line[0].isspace() and record:
            records.append(" ".join(record))
            record = []
        record.append(line)
    if record:
        records.append(" ".join(record))
    for rec in records:
        if f"pid={pid}," not in rec:
            continue
        cols = rec.split()
        local, peer = cols[2].rsplit(":", 1)[1], cols[3].rsplit(":", 1)[1]
        if local_port is not None and local != str(local_port):
            continue
        if peer_port is not None and peer != str(peer_port):
            continue
        total["sockets"] += 1
        total["recv_q"] += int(cols[0])
        total["send_q"] += int(cols[1])
        m = _SKMEM.search(rec)
        if m:
            for item in m.group(1).split(","):
                key = item.rstrip("0123456789")
                if key in ("r", "t", "w"):
                    total[key] += int(item[len(key) :])
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# -- load generators ---------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non2xx: int
    raw: str = field(repr=False, default="")
    cpu_util: float = float("nan")
    cpu_us_per_req: float = float("nan")
    foreign_cores: float = float("nan")


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def run_wrk(url: str, threads: int, conns: int, seconds: int) -> WrkResult:
    cmd = [*PIN["load"], "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    return parse_wrk(
        subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    )


def parse_wrk(raw: str) -> WrkResult:
    """Requests/s, p50/p99, request and error counts from wrk's ``--latency`` output."""

    def grab(pattern: str, conv: Any = float, default: Any = 0) -> Any:
        m = re.search(pattern, raw, re.M)
        return conv(m.group(1)) if m else default

    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", raw)
    if m:
        errors = sum(int(x) for x in m.groups())
    return WrkResult(
        rps=grab(r"^Requests/sec:\s+([\d.]+)"),
        p50_ms=grab(r"^\s+50%\s+(\S+)", _ms, float("nan")),
        p99_ms=grab(r"^\s+99%\s+(\S+)", _ms, float("nan")),
        requests=grab(r"^\s+(\d+) requests in", int),
        errors=errors,
        non2xx=grab(r"Non-2xx or 3xx responses: (\d+)", int),
        raw=raw,
    )


def run_curl(url: str, timeout: float = 120.0) -> dict[str, Any]:
    """Full-speed download to /dev/null; returns status, bytes, seconds, MiB/s."""
    fmt = "%{http_code} %{size_download} %{time_total} %{speed_download}"
    cp = subprocess.run(
        [
            *PIN["load"],
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            str(int(timeout)),
            "-w",
            fmt,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    code, size, secs, speed = cp.stdout.split()
    return {
        "status": int(code),
        "bytes": int(size),
        "seconds": float(secs),
        "mib_s": float(speed) / 1048576,
        "exit": cp.returncode,
    }


def callgrind_instructions(argv: Sequence[str]) -> int:
    """
    Run ``argv`` (a Python command) under ``valgrind --tool=callgrind``.

    The child runs with ``PYTHONHASHSEED=0``: with a random seed, dict and set layouts (and
    with them the count) change from run to run: 250k to 262k for the same 1 KiB hit.

    :returns: the instructions callgrind counted for the whole process.
    """
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True, env=env)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total in:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def dump(path: Path, obj: Any) -> None:
    def default(o: Any) -> Any:
        return asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)

    path.write_text(json.dumps(obj, indent=2, default=default))


def profile_under_load(
    name: str, pid: int, out: Path, seconds: int, load: Sequence[str]
) -> str | None:
    """
    py-spy (``--gil``, 100 Hz) on ``pid`` for ``seconds`` while ``load`` (a wrk command,
    run for ``seconds + 4`` s by the caller's choice of ``-d``) keeps it busy.

    Writes ``profile-<name>.folded`` and ``profile-<name>.txt`` (the top frames) into ``out``.

    :returns: the summary text, or ``None`` when py-spy is not installed in the venv.
    """
    pyspy = Path(PYTHON).parent / "py-spy"
    if not pyspy.exists():
        return None
    wrk = subprocess.Popen([*PIN["load"], *load], stdout=subprocess.DEVNULL)
    time.sleep(2)
    folded = out / f"profile-{name}.folded"
    subprocess.run(
        [
            str(pyspy),
            "record",
            "--gil",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "100",
            "--format",
            "raw",
            "-o",
            str(folded),
        ],
        capture_output=True,
        timeout=seconds + 60,
    )
    wrk.wait(timeout=seconds + 60)
    summary = subprocess.run(
        [PYTHON, "bench/fold_summary.py", str(folded), "--top", "30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    (out / f"profile-{name}.txt").write_text(summary)
    return summary
