"""Run the Yatagarasu benchmark: origin, baselines and the proxy in one go; print a table.

Targets (all on 127.0.0.1, each its own process):

* ``nginx``  -- the origin itself (nginx serving the generated tree path-style, like S3)
* ``bare``   -- ``bench/bare_resource.py``: a bare twisted.web resource returning 1 KiB
* ``relay``  -- ``bench/bare_relay.py``: Agent + persistent pool + deliverBody, push producer
* ``proxy``  -- ``twistd -n yatagarasu --config ...`` with nginx as its S3 endpoint
* knob variants, 1 KiB scenario only: ``relay_pool2`` (Twisted's default
  maxPersistentPerHost=2), ``relay_accesslog`` and ``bare_accesslog`` (twisted.web's
  access-log line kept), ``relay_epcache`` (one cached client endpoint instead of
  Agent's per-request HostnameEndpoint); 1 GiB and slow-client scenarios only:
  ``relay_buf16k`` (16 KiB client pause threshold and upstream recv size instead of
  64 KiB), ``relay_pause16k`` (16 KiB pause threshold, 64 KiB recv), ``relay_sndbuf256k``
  (SO_SNDBUF 256 KiB on client sockets)

Scenarios: ``small`` (wrk, 1 KiB GET), ``big`` (curl, full-speed 1 GiB GET), ``slow``
(N slow clients on the 1 GiB object, RSS and socket memory, several rounds).

Raw results go to ``bench/results/<UTC timestamp>/`` (git-ignored); the table is printed and
written there as ``results.md``.  Examples::

    .venv/bin/python bench/run.py                      # everything (proxy if installed)
    .venv/bin/python bench/run.py --proxy skip         # baselines only
    .venv/bin/python bench/run.py --quick              # short smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import (
    PIN,
    PYTHON,
    REPO,
    TWISTD,
    ForeignLoad,
    Server,
    cpu_seconds,
    dump,
    http_get,
    machine_facts,
    median,
    open_fds,
    profile_under_load,
    rss_kib,
    run_curl,
    run_wrk,
    set_pinning,
    sockstat,
    ss_skmem,
    wait_quiet,
)
from origin import BUCKET, Origin

from devharness.ports import free_port

SMALL_KEY = f"/{BUCKET}/1k.bin"
BIG_KEY = f"/{BUCKET}/1g.bin"
PROXY_CONFIG = """\
server: {{address: 127.0.0.1, port: {port}{server_extra}}}
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


def proxy_installed() -> bool:
    try:
        out = subprocess.run(
            [TWISTD, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "yatagarasu" in out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out = REPO / "bench" / "results" / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, Server] = {}
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.results: dict[str, Any] = {"args": vars(args), "machine": machine_facts(), "notes": []}
        self.origin: Origin | None = None

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- setup -----------------------------------------------------------------------------

    def start(self, targets: list[str]) -> None:
        self.origin = Origin(workers=self.args.nginx_workers)
        self.log(f"origin nginx on {self.origin.url} (data in {self.origin.tmp})")
        self.urls["nginx"] = self.origin.url
        self.pids["nginx"] = self.origin.process.pid
        for name in targets:
            if name == "nginx":
                continue
            try:
                self._start_one(name)
            except Exception as e:  # one target failing must not lose the others
                self.log(f"!! {name} did not start: {e}")
                self.results["notes"].append(f"{name} did not start: {e}")

    def _start_one(self, name: str) -> None:
        assert self.origin is not None
        port = free_port()
        log = self.out / f"{name}.log"
        if name in ("bare", "bare_accesslog"):
            argv = [PYTHON, "bench/bare_resource.py", "--port", str(port)]
            if name == "bare_accesslog":
                argv.append("--access-log")
        elif name.startswith("relay"):
            argv = [
                PYTHON,
                "bench/bare_relay.py",
                "--port",
                str(port),
                "--upstream",
                self.origin.url,
                "--pool-size",
                "2" if name == "relay_pool2" else str(self.args.pool_size),
            ]
            if name == "relay_accesslog":
                argv.append("--access-log")
            if name == "relay_buf16k":
                argv += ["--buffer-size", "16384", "--recv-size", "16384"]
            if name == "relay_epcache":
                argv.append("--cache-endpoint")
            if name == "relay_pause16k":
                argv += ["--buffer-size", "16384"]
            if name == "relay_sndbuf256k":
                argv += ["--sndbuf", "262144"]
        elif name == "proxy_default":
            # the default configuration: no `logging` key, so the access log is on (info)
            argv = self._proxy_argv(port, with_logging=False, name=name)
            self._register(name, Server(name, argv, port, log, probe=SMALL_KEY, timeout=60))
            return
        elif name in ("proxy", "proxy_tuned"):
            argv = self._proxy_argv(port, with_logging=True, tuned=name == "proxy_tuned")
            try:
                srv = Server(name, argv, port, log, probe=SMALL_KEY, timeout=60)
            except RuntimeError as e:
                text = log.read_text(errors="replace")
                if "logging" not in text:
                    raise RuntimeError(f"{e}; see {log}") from None
                self.log("proxy rejected the 'logging' key; retrying without it")
                self.results["notes"].append("proxy rejected `logging: {level: warn}`; dropped")
                argv = self._proxy_argv(port, with_logging=False, tuned=name == "proxy_tuned")
                srv = Server(name, argv, port, log, probe=SMALL_KEY, timeout=60)
            self._register(name, srv)
            return
        else:
            raise ValueError(f"unknown target {name}")
        self._register(name, Server(name, argv, port, log, probe=SMALL_KEY))

    def _proxy_argv(
        self, port: int, with_logging: bool, tuned: bool = False, name: str = ""
    ) -> list[str]:
        assert self.origin is not None
        cfg = self.out / f"{name or ('proxy_tuned' if tuned else 'proxy')}.yaml"
        # proxy_tuned: the memory knobs for many slow clients (docs/configuration.md).
        extra = ", stream_buffer_bytes: 16384, socket_send_buffer_bytes: 262144" if tuned else ""
        cfg.write_text(
            PROXY_CONFIG.format(
                port=port,
                server_extra=extra,
                endpoint=self.origin.url,
                logging="logging: {level: warn}\n" if with_logging else "",
            )
        )
        return [TWISTD, "-n", "--pidfile=", "yatagarasu", "--config", str(cfg)]

    def _register(self, name: str, srv: Server) -> None:
        self.servers[name] = srv
        self.urls[name] = srv.url
        self.pids[name] = srv.pid
        self.log(f"{name} on {srv.url} pid {srv.pid}: {' '.join(srv.argv)}")

    def stop(self) -> None:
        for srv in self.servers.values():
            srv.stop()
        if self.origin is not None:
            self.origin.close()

    # -- checks ----------------------------------------------------------------------------

    def check(self) -> None:
        """Each target answers the 1 KiB GET with 200 and the S3-ish headers."""
        checks: dict[str, Any] = {}
        for name, url in self.urls.items():
            try:
                status, headers, length = http_get(url + SMALL_KEY)
                checks[name] = {
                    "status": status,
                    "length": length,
                    **{
                        h: headers.get(h)
                        for h in (
                            "etag",
                            "last-modified",
                            "content-length",
                            "content-type",
                            "x-request-id",
                            "x-cache",
                        )
                    },
                }
            except OSError as e:
                checks[name] = {"error": str(e)}
            self.log(f"check {name}: {checks[name]}")
        self.results["checks"] = checks

    # -- scenarios -------------------------------------------------------------------------

    def small(self, targets: list[str]) -> None:
        a = self.args
        runs: dict[str, list[Any]] = {t: [] for t in targets if t in self.urls}
        for t in runs:  # warm-up: fills connection pools, caches and allocators
            run_wrk(self.urls[t] + SMALL_KEY, a.wrk_threads, a.wrk_conns, 3)
        for i in range(a.wrk_runs):
            for t in runs:  # interleaved so drift hits every target alike
                waited, before = self.quiet()
                cpu0 = cpu_seconds(self.pids[t])
                foreign = ForeignLoad(list(self.pids.values()))
                r = run_wrk(self.urls[t] + SMALL_KEY, a.wrk_threads, a.wrk_conns, a.wrk_seconds)
                cpu = cpu_seconds(self.pids[t]) - cpu0
                r.foreign_cores = foreign.cores()
                r.cpu_util = cpu / a.wrk_seconds
                r.cpu_us_per_req = 1e6 * cpu / r.requests if r.requests else float("nan")
                (self.out / f"wrk-{t}-{i}.txt").write_text(r.raw)
                runs[t].append(r)
                self.log(
                    f"small {t} run {i}: {r.rps:.0f} req/s p50 {r.p50_ms:.2f} ms "
                    f"p99 {r.p99_ms:.2f} ms errors {r.errors} non2xx {r.non2xx} "
                    f"server CPU {100 * r.cpu_util:.0f} % = {r.cpu_us_per_req:.0f} us/req; "
                    f"foreign load {r.foreign_cores:.2f} cores (waited {waited:.0f} s, "
                    f"{before:.2f} before)"
                )
        self.results["small"] = {
            t: {
                "runs": rs,
                "rps": median([r.rps for r in rs]),
                "p50_ms": median([r.p50_ms for r in rs]),
                "p99_ms": median([r.p99_ms for r in rs]),
                "cpu_util": median([r.cpu_util for r in rs]),
                "cpu_us_per_req": median([r.cpu_us_per_req for r in rs]),
                "foreign_cores_max": max(r.foreign_cores for r in rs),
                "errors": sum(r.errors for r in rs),
                "non2xx": sum(r.non2xx for r in rs),
            }
            for t, rs in runs.items()
        }

    def quiet(self) -> tuple[float, float]:
        """Wait (bounded by --quiet-max-wait) until other jobs on the box leave the CPU."""
        a = self.args
        if a.quiet_threshold <= 0:
            return 0.0, float("nan")
        return wait_quiet(list(self.pids.values()), a.quiet_threshold, a.quiet_max_wait)

    def profile(self, targets: list[str]) -> None:
        """py-spy (if installed in the venv) on each target under the 1 KiB wrk load."""
        a = self.args
        out: dict[str, str] = {}
        for t in targets:
            if t not in self.urls:
                continue
            secs = a.profile_seconds
            load = [
                "wrk",
                f"-t{a.wrk_threads}",
                f"-c{a.wrk_conns}",
                f"-d{secs + 4}s",
                self.urls[t] + SMALL_KEY,
            ]
            if profile_under_load(t, self.pids[t], self.out, secs, load) is None:
                self.results["notes"].append("profile skipped: .venv/bin/py-spy not installed")
                return
            out[t] = str((self.out / f"profile-{t}.txt").relative_to(REPO))
            self.log(f"profile {t}: {out[t]}")
        self.results["profile"] = out

    def big(self, targets: list[str]) -> None:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets if t in self.urls}
        run_curl(self.urls["nginx"] + BIG_KEY)  # page cache warm-up, not counted
        for i in range(self.args.big_runs):
            for t in runs:
                self.quiet()
                foreign = ForeignLoad(list(self.pids.values()))
                cpu0 = cpu_seconds(self.pids[t])
                r = run_curl(self.urls[t] + BIG_KEY)
                r["cpu_s_per_gib"] = (
                    (cpu_seconds(self.pids[t]) - cpu0) * 1024**3 / max(r["bytes"], 1)
                )
                r["foreign_cores"] = foreign.cores()
                runs[t].append(r)
                self.log(
                    f"big {t} run {i}: {r['mib_s']:.0f} MiB/s status {r['status']} "
                    f"bytes {r['bytes']}; server CPU {r['cpu_s_per_gib']:.2f} s/GiB; "
                    f"foreign load {r['foreign_cores']:.2f} cores"
                )
        self.results["big"] = {
            t: {
                "runs": rs,
                "mib_s": median([r["mib_s"] for r in rs]),
                "cpu_s_per_gib": median([r["cpu_s_per_gib"] for r in rs]),
                "foreign_cores_max": max(r["foreign_cores"] for r in rs),
                "complete": all(r["status"] == 200 and r["bytes"] == 1024**3 for r in rs),
            }
            for t, rs in runs.items()
        }

    def slow(self, targets: list[str]) -> None:
        assert self.origin is not None
        a = self.args
        out: dict[str, Any] = {}
        for t in targets:
            if t not in self.servers:
                continue
            pid, port = self.pids[t], self.servers[t].port
            rounds = []
            rss_before = rss_kib(pid)
            fds_before = open_fds(pid)
            for i in range(a.slow_rounds):
                self.quiet()
                foreign = ForeignLoad(list(self.pids.values()))
                cmd = [*PIN["load"], PYTHON, "bench/slow_clients.py",
                       "--url", self.urls[t] + BIG_KEY, "--clients", str(a.slow_clients),
                       "--rate", a.slow_rate, "--duration", str(a.slow_seconds)]  # fmt: skip
                proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
                time.sleep(a.slow_seconds * 0.75)
                during = {
                    "rss_kib": rss_kib(pid),
                    "fds": open_fds(pid),
                    "sockstat": sockstat(),
                    "client_side": ss_skmem(pid, local_port=port),
                    "upstream_side": ss_skmem(pid, peer_port=self.origin.port),
                }
                stdout, _ = proc.communicate(timeout=a.slow_seconds + 60)
                time.sleep(3.0)  # let aborted connections and the pool settle
                rnd = {
                    "foreign_cores": foreign.cores(),
                    "during": during,
                    "clients": json.loads(stdout.strip().splitlines()[-1]),
                    "rss_after_kib": rss_kib(pid),
                    "fds_after": open_fds(pid),
                    "upstream_after": ss_skmem(pid, peer_port=self.origin.port),
                    "sockstat_after": sockstat(),
                }
                rounds.append(rnd)
                per_conn = (during["rss_kib"] - rss_before) / a.slow_clients
                cs, us = during["client_side"], during["upstream_side"]
                self.log(
                    f"slow {t} round {i}: RSS before {rss_before} during {during['rss_kib']} "
                    f"({per_conn:.1f} KiB/conn) after {rnd['rss_after_kib']} KiB; fds "
                    f"{fds_before}/{during['fds']}/{rnd['fds_after']}; clients "
                    f"{rnd['clients']['mib_s_total']} MiB/s, statuses "
                    f"{rnd['clients']['statuses']}; client socks {cs}; upstream socks {us}; "
                    f"upstream after {rnd['upstream_after']['sockets']} socks"
                )
            out[t] = {
                "rss_before_kib": rss_before,
                "fds_before": fds_before,
                "rounds": rounds,
                "per_conn_kib": max(
                    (r["during"]["rss_kib"] - rss_before) / a.slow_clients for r in rounds
                ),
                "rss_after_r1_kib": rounds[0]["rss_after_kib"],
                "rss_after_last_kib": rounds[-1]["rss_after_kib"],
            }
        self.results["slow"] = out

    # -- report ----------------------------------------------------------------------------

    def table(self) -> str:
        r = self.results
        lines = [f"# Yatagarasu bench {r['machine']['date_utc']}", ""]
        m = r["machine"]
        lines.append(
            f"{m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}, {m['python']}, "
            f"Twisted {m['twisted']}, {m['nginx']}, {m['wrk']}, git {m['git']}"
        )
        lines.append("")
        lines.append(f"CPU pinning: {m.get('pinning', 'n/a')}")
        lines.append("")
        a = self.args

        def pct(x: float, y: float) -> str:
            return f"{100 * x / y:.0f} %" if y and x == x and y == y else "n/a"

        if "small" in r:
            s = r["small"]
            rel = s.get("relay", {}).get("rps", 0)
            lines += [
                f"## 1 KiB GET: wrk -t{a.wrk_threads} -c{a.wrk_conns} -d{a.wrk_seconds}s "
                f"--latency, median of {a.wrk_runs}",
                "",
                "| target | req/s | p50 ms | p99 ms | errors | non-2xx | server CPU "
                "| CPU us/req | vs relay | foreign cores (max) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for t, v in s.items():
                lines.append(
                    f"| {t} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} "
                    f"| {v['errors']} | {v['non2xx']} | {100 * v['cpu_util']:.0f} % "
                    f"| {v['cpu_us_per_req']:.0f} | {pct(v['rps'], rel)} "
                    f"| {v['foreign_cores_max']:.2f} |"
                )
            if "proxy" not in s:
                lines.append("| proxy | pending | | | | | | | | |")
            lines.append("")
        if "big" in r:
            b = r["big"]
            rel = b.get("relay", {}).get("mib_s", 0)
            lines += [
                f"## 1 GiB GET at full speed: curl -o /dev/null, median of {a.big_runs}",
                "",
                "| target | MiB/s | complete | vs relay | server CPU s/GiB | foreign cores (max) |",
                "|---|---:|---|---:|---:|---:|",
            ]
            for t, v in b.items():
                lines.append(
                    f"| {t} | {v['mib_s']:.0f} | {v['complete']} | {pct(v['mib_s'], rel)} "
                    f"| {v['cpu_s_per_gib']:.2f} | {v['foreign_cores_max']:.2f} |"
                )
            if "proxy" not in b:
                lines.append("| proxy | pending | | | | |")
            lines.append("")
        if "slow" in r:
            lines += [
                f"## {a.slow_clients} slow clients x {a.slow_rate}B/s on 1 GiB, "
                f"{a.slow_seconds:.0f} s x {a.slow_rounds} rounds",
                "",
                "RSS in KiB. KiB/conn = (max RSS during a round - RSS before round 1) / clients. "
                "Kernel columns (last round, during): the server's client-facing sockets "
                "(send queue `w`) and upstream sockets (receive queue `r`), from `ss -tmp`.",
                "",
                "| target | RSS before | RSS during (rounds) | KiB/conn | RSS after r1 "
                "| RSS after last | fds before/after last | client MiB/s (rounds) "
                "| kernel: client-side w MiB | kernel: upstream r MiB | foreign cores (max) |",
                "|---|---:|---|---:|---:|---:|---|---|---:|---:|---:|",
            ]
            for t, v in r["slow"].items():
                rounds = v["rounds"]
                during = ", ".join(str(x["during"]["rss_kib"]) for x in rounds)
                mibs = ", ".join(str(x["clients"]["mib_s_total"]) for x in rounds)
                last = rounds[-1]
                cs, us = last["during"]["client_side"], last["during"]["upstream_side"]
                lines.append(
                    f"| {t} | {v['rss_before_kib']} | {during} | {v['per_conn_kib']:.1f} "
                    f"| {v['rss_after_r1_kib']} | {v['rss_after_last_kib']} "
                    f"| {v['fds_before']}/{last['fds_after']} | {mibs} "
                    f"| {cs['w'] / 1048576:.1f} ({cs['sockets']} socks) "
                    f"| {us['r'] / 1048576:.1f} ({us['sockets']} socks) "
                    f"| {max(x['foreign_cores'] for x in rounds):.2f} |"
                )
            if "proxy" not in r["slow"]:
                lines.append("| proxy | pending | | | | | | | | | |")
            lines.append("")
        if r["notes"]:
            lines += ["Notes:", *[f"- {n}" for n in r["notes"]], ""]
        lines.append(f"Raw results: {self.out.relative_to(REPO)}")
        return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--proxy",
        choices=("auto", "skip", "require"),
        default="auto",
        help="auto: include the proxy when `twistd --help` lists yatagarasu",
    )
    p.add_argument(
        "--targets",
        default="nginx,bare,relay",
        help="baseline targets (proxy is added per --proxy); knob variants: "
        "relay_pool2, relay_accesslog, bare_accesslog, relay_epcache, relay_buf16k, "
        "relay_pause16k, "
        "relay_sndbuf256k, proxy_tuned (stream_buffer_bytes 16 KiB + SO_SNDBUF 256 KiB), "
        "proxy_default (the default configuration: access log at info; 1 KiB scenario only)",
    )
    p.add_argument("--scenarios", default="small,big,slow,profile")
    p.add_argument("--profile-seconds", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="short runs for a smoke test")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--wrk-conns", type=int, default=50)
    p.add_argument("--wrk-seconds", type=int, default=15)
    p.add_argument("--wrk-runs", type=int, default=3)
    p.add_argument("--big-runs", type=int, default=5)
    p.add_argument("--slow-clients", type=int, default=50)
    p.add_argument("--slow-rate", default="2M")
    p.add_argument("--slow-seconds", type=float, default=20.0)
    p.add_argument("--slow-rounds", type=int, default=3)
    p.add_argument("--pool-size", type=int, default=64, help="bare relay maxPersistentPerHost")
    p.add_argument("--nginx-workers", type=int, default=1)
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.25,
        help="before each measurement wait until other processes use < this many cores "
        "(0 = never wait)",
    )
    p.add_argument("--quiet-max-wait", type=float, default=90.0)
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server under test to its own CPU (taskset)",
    )
    args = p.parse_args()
    if args.quick:
        args.wrk_seconds, args.wrk_runs, args.big_runs = 4, 1, 1
        args.slow_seconds, args.slow_rounds, args.profile_seconds = 8.0, 2, 4
    targets = [t for t in args.targets.split(",") if t]
    if args.proxy == "require" or (args.proxy == "auto" and proxy_installed()):
        targets.append("proxy")
    scenarios = args.scenarios.split(",")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: servers, nginx and temp files are
    # cleaned up and the partial results are still written.
    signal.signal(signal.SIGTERM, interrupted)
    pinning = set_pinning(not args.no_pin)
    bench = Bench(args)
    bench.results["machine"]["pinning"] = pinning
    bench.log(pinning)
    bench.log(f"results in {bench.out}; targets {targets}; scenarios {scenarios}")
    try:
        bench.start(targets)
        bench.check()
        small_only, big_only = (
            ("relay_pool2", "relay_accesslog", "bare_accesslog", "relay_epcache", "proxy_default"),
            ("relay_buf16k", "relay_pause16k", "relay_sndbuf256k"),
        )
        if "small" in scenarios:
            bench.small([t for t in targets if t not in big_only])
        if "big" in scenarios:
            bench.big([t for t in targets if not t.startswith("bare") and t not in small_only])
        if "slow" in scenarios:
            bench.slow(
                [t for t in targets if t.startswith(("relay", "proxy")) and t not in small_only]
            )
        if "profile" in scenarios:
            bench.profile([t for t in targets if t in ("relay", "proxy")])
    finally:
        bench.stop()
        dump(bench.out / "results.json", bench.results)
        table = bench.table()
        (bench.out / "results.md").write_text(table)
        print()
        print(table)
    if args.proxy == "require" and "proxy" not in bench.servers:
        sys.exit(1)


if __name__ == "__main__":
    main()
