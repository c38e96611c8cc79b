"""Cache hit benchmark: Yatagarasu's memory, disk and redis layers vs a bare twisted.web
resource and nginx ``proxy_cache``, in one run, side by side.

Targets (each its own process, all on 127.0.0.1; with pinning the server under test gets the
last CPU, nginx origin / wrk / redis the others):

* ``bare``     -- ``bench/bare_resource.py --size N`` (the twisted.web ceiling)
* ``mem``      -- the proxy, ``cache_layers: [memory]``, ``logging: {level: warn}``
* ``mem+log``  -- the same with ``logging: {level: info, file: /dev/null}`` (access log kept)
* ``default``  -- the proxy with the default configuration (no ``logging`` key: the access log
  at ``info`` on stdout, here twistd's log file) and ``cache_layers: [memory]``
* ``workers2`` -- ``default`` with ``server.workers: 2``, never pinned (the workers are meant
  to use both cores), and neither is its load generator (pinned to the other CPU, it would
  get half of it at most, and starve the worker that has the other CPU to itself)
* ``workers2cpu`` -- ``workers2`` with ``server.worker_cpu_affinity: true`` (each worker bound
  to its own CPU; the load generator, unpinned, shares both)
* ``gateway``  -- the peer, nginxinc/nginx-s3-gateway (``proxy_cache`` on, as it ships; 1 nginx
  worker; its own moto), started with /work/shared/peers/nginx-s3-gateway/run.sh
* ``disk``     -- the proxy, ``cache_layers: [disk]`` (``cache_dir`` in a temp dir)
* ``redis``    -- the proxy, ``cache_layers: [redis]`` on a private ``redis-server``
* ``nginx``    -- nginx ``proxy_cache`` (1 worker) in front of the same origin

Scenarios: wrk hits on 1 KiB and 100 KiB objects (warmed first, ``X-Cache: HIT`` checked
with curl, origin access-log lines counted during the measurement), ``-c1`` latency of bare
vs memory hits (cache lookup overhead), a 100-client thundering herd on cold objects
(upstream GETs counted in the origin's access log), and an optional py-spy profile of
memory hits.

Raw output goes to ``bench/results/cache-<UTC stamp>/`` (git-ignored); the markdown table is
printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/cache_bench.py                       # full run (~15 min)
    .venv/bin/python bench/cache_bench.py --seconds 2 --runs 1 --no-wait   # smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

from benchlib import PIN, PYTHON, TWISTD, Server, dump, machine_facts, median, set_pinning
from proxylib import (
    BUCKET,
    CLIENTS,
    GATEWAY_KEYS,
    Gateway,
    LoggedOrigin,
    NginxCache,
    Run,
    add_wrk_options,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    fmt,
    herd,
    log,
    md_table,
    pct,
    profile,
    results_dir,
    run_wrk,
    start_proxy,
    summarize,
    wait_for_foreign_bench,
    warm,
    wrk_cmd,
)

from devharness.ports import free_port
from devharness.redis_server import RedisServer

SIZES = {"1k": 1024, "100k": 100 * 1024}
HERD_SIZES = {"1k": 1024, "100k": 100 * 1024, "5m": 5 * 1024 * 1024}
#: seconds after each wrk run before counting origin GETs: requests cut off when wrk stops
#: end (a redis lookup times out after 0.5 s and may then go to S3)
SETTLE = 1.5
PROXIES = ("mem", "mem+log", "default", "workers2", "workers2cpu", "disk", "redis")
#: targets with two worker processes: neither they nor their load generator are pinned
WORKERS2 = ("workers2", "workers2cpu")
ALL = ("bare", "mem", "mem+log", "disk", "redis", "nginx")
#: targets with no object of ours in the bench origin (no herd, no origin GET count)
FOREIGN = ("bare", "gateway")
LAYER = {
    "bare": "— (no cache, fixed body)",
    "mem": "memory",
    "mem+log": "memory, access log on",
    "default": "memory, default config (access log on)",
    "workers2": "memory, default config, workers: 2",
    "workers2cpu": "memory, default config, workers: 2, worker_cpu_affinity",
    "gateway": "nginx-s3-gateway proxy_cache, 1 worker",
    "disk": "disk",
    "redis": "redis",
    "nginx": "nginx proxy_cache",
}


def name_of(target: str) -> str:
    """A target as a file-name part (``disk@before`` -> ``disk-before``)."""
    return target.replace("+", "").replace("@", "-")


def before_twistd(root: Path, out: Path) -> str:
    """A wrapper running this checkout's twistd on the code of ``root``."""
    script = out / "twistd-before.sh"
    script.write_text(f'#!/bin/sh\ncd {root} && PYTHONPATH={root} exec {TWISTD} "$@"\n')
    script.chmod(0o755)
    return str(script)


def proxy_config(kind: str, port: int, endpoint: str, tmp: Path, redis_url: str) -> str:
    logging = {
        "mem+log": "logging: {level: info, file: /dev/null}\n",
        "default": "",
        "workers2": "",
        "workers2cpu": "",
    }.get(kind, "logging: {level: warn}\n")
    workers = {"workers2": ", workers: 2", "workers2cpu": ", workers: 2, worker_cpu_affinity: true"}
    if kind in ("mem", "mem+log", "default", *WORKERS2):
        cache = (
            "cache: {enabled: true, cache_layers: [memory], "
            "memory: {max_cache_size_mb: 256, max_item_size_mb: 10}}\n"
        )
    elif kind == "disk":
        cache = (
            "cache: {enabled: true, cache_layers: [disk], disk: {enabled: true, "
            f"cache_dir: {tmp / 'disk-cache'}, max_disk_cache_size_mb: 1024}}}}\n"
        )
    elif kind == "redis":
        cache = (
            "cache: {enabled: true, cache_layers: [redis], "
            f"redis: {{enabled: true, redis_url: '{redis_url}'}}}}\n"
        )
    else:
        raise ValueError(kind)
    return (
        f"server: {{address: 127.0.0.1, port: {port}{workers.get(kind, '')}}}\n"
        + logging
        + cache
        + "buckets:\n"
        + bucket_yaml(BUCKET, endpoint)
    )


def ratio(x: float, y: float) -> str:
    return "-" if not y or x != x or y != y else f"{x / y:.2f}x"


def cache_header(target: str) -> str:
    """:returns: the response header saying HIT or MISS for ``target``."""
    return "x-cache-status" if target == "gateway" else "x-cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser, warmup=3, wait_until="17:50")
    parser.add_argument("--c1-seconds", type=int, default=10)
    parser.add_argument("--targets", default=",".join(ALL))
    parser.add_argument("--herd", type=int, default=100, help="clients (0: skip)")
    parser.add_argument("--profile-seconds", type=int, default=10, help="0: skip py-spy")
    parser.add_argument(
        "--profile-targets", default="mem", help="proxies to profile, e.g. mem,disk,redis"
    )
    parser.add_argument("--profile-sizes", default="1k", help="object sizes to profile (1k,100k)")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="wrk",
        help="load generator of the hit runs: wrk, or bench/loadgen.c, which drops the bodies "
        "in the kernel and so takes about half of wrk's CPU per 100 KiB response",
    )
    parser.add_argument(
        "--before-root",
        help="a checkout of older code: targets mem@before, disk@before, redis@before run it "
        "(with this checkout's .venv, PYTHONPATH set to it)",
    )
    a = parser.parse_args()
    exit_on_sigterm()
    targets = [t for t in a.targets.split(",") if t]

    out = results_dir("cache")
    notes: list[str] = []

    def gate() -> None:
        if a.no_wait:
            return
        note = wait_for_foreign_bench(a.wait_until)
        if note and note not in notes:
            notes.append(note)

    gate()
    pinning = set_pinning(not a.no_pin)
    facts = machine_facts()
    log(f"results in {out}; {pinning}")
    herd_objects = {
        f"herd-{name_of(t)}-{s}.bin": n
        for t in targets
        if t not in FOREIGN
        for s, n in HERD_SIZES.items()
    }
    origin = LoggedOrigin(extra=herd_objects)
    log(f"origin nginx {origin.url} (data in {origin.tmp}, access log {origin.access_log})")
    servers: dict[str, Any] = {}  # target -> object with .url/.pid/.port
    bare: dict[str, Server] = {}
    redis: RedisServer | None = None
    results: dict[str, Any] = {"args": vars(a), "machine": facts, "pinning": pinning}
    configs: dict[str, str] = {}
    commands: dict[str, str] = {}
    try:
        # -- start everything -----------------------------------------------------------------
        if "bare" in targets:
            for s, n in SIZES.items():
                port = free_port()
                argv = [PYTHON, "bench/bare_resource.py", "--port", str(port), "--size", str(n)]
                bare[s] = Server(f"bare-{s}", argv, port, out / f"bare-{s}.log")
                commands[f"bare-{s}"] = " ".join(argv[1:])
                log(f"bare-{s} on {bare[s].url} pid {bare[s].pid}")
        if any(t.partition("@")[0] == "redis" for t in targets):
            redis_dir = Path(tempfile.mkdtemp(prefix="yatagarasu-redis-"))
            redis = RedisServer(redis_dir, command_prefix=PIN["load"]).start()
            commands["redis-server"] = " ".join(redis.argv)
            log(f"redis-server on {redis.url} pid {redis.pid}")
        for t in targets:
            kind, _, before = t.partition("@")
            if kind not in PROXIES:
                continue
            port = free_port()
            tmp, twistd = out, TWISTD
            if before:
                if not a.before_root:
                    raise SystemExit(f"{t}: needs --before-root")
                tmp, twistd = out / "before", before_twistd(Path(a.before_root), out)
            redis_url = redis.url if redis else "redis://127.0.0.1:1"
            cfg = configs[t] = proxy_config(kind, port, origin.url, tmp, redis_url)
            servers[t] = start_proxy(
                name_of(t), cfg, out, f"/{BUCKET}/1k.bin", port, twistd, pin=kind not in WORKERS2
            )
            commands[t] = " ".join(servers[t].argv)
        if "nginx" in targets:
            servers["nginx"] = NginxCache(origin.port, f"/{BUCKET}/1k.bin")
            configs["nginx"] = servers["nginx"].conf.read_text()
            commands["nginx"] = f"nginx -p TMP -c TMP/nginx.conf (pid {servers['nginx'].pid})"
            log(f"nginx proxy_cache on {servers['nginx'].url} pid {servers['nginx'].pid}")
        if "gateway" in targets:
            servers["gateway"] = Gateway()
            configs["gateway"] = servers["gateway"].conf.read_text()
            commands["gateway"] = servers["gateway"].command
            log(f"nginx-s3-gateway on {servers['gateway'].url} pid {servers['gateway'].pid}")
        ours = [origin.process.pid] + [s.pid for s in [*servers.values(), *bare.values()]]
        if redis and redis.pid is not None:
            ours.append(redis.pid)

        def url_pid(t: str, s: str) -> tuple[str, int]:
            if t == "bare":
                return bare[s].url + f"/{BUCKET}/{s}.bin", bare[s].pid
            if t == "gateway":
                return servers[t].url + "/" + GATEWAY_KEYS[s], servers[t].pid
            return servers[t].url + f"/{BUCKET}/{s}.bin", servers[t].pid

        def hit_run(t: str, url: str, seconds: int, pid: int) -> Run:
            # the load generator shares the cores with workers2's workers, unpinned like them
            pin = t not in WORKERS2
            return run_wrk(t, url, a.conns, seconds, pid, ours, client=a.client, pin=pin)

        # -- warm the caches and check X-Cache: HIT ------------------------------------------
        checks: dict[str, Any] = {}
        for t in targets:
            if t == "bare":
                continue
            for s in SIZES:
                url, _ = url_pid(t, s)
                _, xc, seen = warm(url, header=cache_header(t))
                checks[f"{t}-{s}"] = seen
                log(f"warm {t}-{s}: {seen}")
                if xc != "HIT":
                    notes.append(f"{t}-{s}: no X-Cache: HIT after warming ({seen[-3:]})")
        results["warm"] = checks
        for t in targets:  # wrk warm-up (allocators, connection setup), not recorded
            for s in SIZES:
                url, pid = url_pid(t, s)
                hit_run(t, url, a.warmup_seconds, pid)
        time.sleep(SETTLE)
        for t in targets:  # still a HIT after the warm-up (nothing evicted / expired)
            if t == "bare":
                continue
            for s in SIZES:
                url, _ = url_pid(t, s)
                _, _, seen = warm(url, tries=1, header=cache_header(t))
                checks[f"{t}-{s}-after-warmup"] = seen
        # -- hits ------------------------------------------------------------------------------
        runs: dict[str, list[Run]] = {f"{t}-{s}": [] for s in SIZES for t in targets}
        for i in range(a.runs):
            for s in SIZES:
                for t in targets:
                    gate()
                    url, pid = url_pid(t, s)
                    before = origin.count(f"{s}.bin")
                    r = hit_run(t, url, a.seconds, pid)
                    time.sleep(SETTLE)  # requests cut off at the client's end finish (or time out)
                    if t not in FOREIGN:
                        r.origin_delta = origin.count(f"{s}.bin") - before
                    (out / f"wrk-{name_of(t)}-{s}-{i}.txt").write_text(r.result.raw)
                    runs[f"{t}-{s}"].append(r)
                    log(
                        f"{t}-{s} run {i}: {r.result.rps:.0f} req/s p50 {r.result.p50_ms:.2f} "
                        f"ms p99 {r.result.p99_ms:.2f} ms errors {r.result.errors} non2xx "
                        f"{r.result.non2xx} server CPU {100 * r.cpu_util:.0f} % origin GETs "
                        f"+{r.origin_delta} foreign {r.foreign_cores:.2f} cores, "
                        f"{faults_per_request([r]):.2f} page faults/req, {a.client} CPU "
                        f"{100 * r.extra['client_cores']:.0f} %"
                    )
        results["hits"] = {k: {"summary": summarize(v), "runs": v} for k, v in runs.items()}
        # -- -c1 latency: the lookup overhead without queueing -----------------------------
        lat: dict[str, list[Run]] = {}
        lat_targets = [t for t in ("bare", "mem", "default", "nginx", "gateway") if t in targets]
        if a.c1_seconds > 0:
            for i in range(max(1, min(a.runs, 3))):
                for t in lat_targets:
                    gate()
                    url, pid = url_pid(t, "1k")
                    r = run_wrk(t, url, 1, a.c1_seconds, pid, ours)
                    (out / f"wrk-c1-{t}-1k-{i}.txt").write_text(r.result.raw)
                    lat.setdefault(t, []).append(r)
                    log(
                        f"c1 {t}-1k run {i}: {r.result.rps:.0f} req/s p50 "
                        f"{r.result.p50_ms * 1000:.0f} us p99 {r.result.p99_ms * 1000:.0f} us"
                    )
        results["c1"] = {k: {"summary": summarize(v), "runs": v} for k, v in lat.items()}
        # -- herd ------------------------------------------------------------------------------
        herds: dict[str, Any] = {}
        if a.herd > 0:
            for t in targets:
                if t in FOREIGN:
                    continue
                for s in HERD_SIZES:
                    gate()
                    key = f"herd-{name_of(t)}-{s}.bin"
                    before = origin.count(key)
                    h = herd(servers[t].port, f"/{BUCKET}/{key}", n=a.herd)
                    time.sleep(0.5)  # let the origin flush its access log line(s)
                    h["origin_gets"] = origin.count(key) - before
                    _, xc, seen = warm(servers[t].url + f"/{BUCKET}/{key}", tries=1)
                    if xc != "HIT":  # the store may still be in flight: once more, later
                        time.sleep(2.0)
                        _, xc2, _ = warm(servers[t].url + f"/{BUCKET}/{key}", tries=1)
                        xc = f"{xc}, 2 s later {xc2}"
                    h["next_request"] = xc
                    herds[f"{t}-{s}"] = h
                    log(f"herd {t}-{s}: {h}")
        results["herd"] = herds
        # -- profile ---------------------------------------------------------------------------
        prof: dict[str, str] = {}
        profiled = [t for t in a.profile_targets.split(",") if t in servers]
        for t in profiled if a.profile_seconds > 0 else ():
            for s in a.profile_sizes.split(","):
                gate()
                url, pid = url_pid(t, s)
                name = f"{name_of(t)}-{s}"
                summary = profile(name, url, pid, out, a.profile_seconds)
                if summary:
                    prof[name] = summary
                    log(f"profile {name}: {out / f'profile-{name}.txt'}")
        results["profile"] = prof
    finally:
        for srv in servers.values():
            if isinstance(srv, Server):
                srv.stop()
            else:
                srv.close()
        for b in bare.values():
            b.stop()
        if redis:
            redis.stop()
            shutil.rmtree(redis.workdir, ignore_errors=True)
        origin.close()
    results["notes"] = notes
    results["configs"] = configs
    results["commands"] = commands
    dump(out / "results.json", results)
    md = table(results, a, targets, facts_md(facts, pinning))
    (out / "results.md").write_text(md)
    for kind, cfg in configs.items():
        (out / f"config-{name_of(kind)}.txt").write_text(cfg)
    print(md)


def cpu_per_request(runs: list[Run]) -> float:
    """Median over runs of the server's CPU µs per request (less load-sensitive than req/s)."""
    values = [r.cpu_util * 1e6 / r.result.rps for r in runs if r.result.rps > 0]
    return median(values)


def faults_per_request(runs: list[Run]) -> float:
    """Median over runs of the server's minor page faults per request (fresh pages touched)."""
    values = [r.extra["minor_faults"] / r.result.requests for r in runs if r.result.requests > 0]
    return median(values)


def client_cores(runs: list[Run]) -> float:
    """Median over runs of the load generator's CPU (cores), which shares the machine."""
    values = [r.extra["client_cores"] for r in runs]
    return median(values)


def table(res: dict[str, Any], a: argparse.Namespace, targets: list[str], facts: str) -> str:
    hits = res["hits"]
    lines = [
        f"### Cache hits ({a.client}, 1 thread, {a.conns} connections, {a.seconds} s, "
        f"median of {a.runs})",
        "",
        facts,
        "",
    ]
    rows = []
    for s in SIZES:
        base = hits.get(f"bare-{s}", {}).get("summary", {}).get("rps", float("nan"))
        peer = hits.get(f"gateway-{s}", {}).get("summary", {}).get("rps", float("nan"))
        mem = hits.get(f"mem-{s}", {}).get("summary", {}).get("rps", float("nan"))
        mem_cpu = cpu_per_request(hits.get(f"mem-{s}", {}).get("runs", []))
        for t in targets:
            sm = hits[f"{t}-{s}"]["summary"]
            deltas = [r.origin_delta for r in hits[f"{t}-{s}"]["runs"]]
            cpu = cpu_per_request(hits[f"{t}-{s}"]["runs"])
            rows.append(
                [
                    f"{t} {s}",
                    LAYER[t.partition("@")[0]] + (" (--before-root)" if "@" in t else ""),
                    f"{sm['rps']:.0f}",
                    fmt(sm["p50_ms"]),
                    fmt(sm["p99_ms"]),
                    pct(sm["rps"], base) if t != "bare" else "100 %",
                    ratio(sm["rps"], peer),
                    pct(sm["rps"], mem),
                    f"{cpu:.0f}",
                    pct(mem_cpu, cpu),
                    f"{100 * sm['cpu_util']:.0f} %",
                    f"{faults_per_request(hits[f'{t}-{s}']['runs']):.2f}",
                    f"{100 * client_cores(hits[f'{t}-{s}']['runs']):.0f} %",
                    "-" if t in FOREIGN else "+".join(str(d) for d in deltas),
                    f"{sm['errors']}/{sm['non2xx']}",
                    fmt(sm["foreign_max"]),
                ]
            )
    lines.append(
        md_table(
            [
                "target",
                "layer",
                "req/s",
                "p50 ms",
                "p99 ms",
                "vs bare",
                "vs gateway",
                "vs memory hit",
                "server CPU µs/req",
                "vs memory hit (CPU/req)",
                "server CPU",
                "page faults/req",
                f"{a.client} CPU",
                "origin GETs during runs",
                "sock err/non-2xx",
                "foreign cores (max)",
            ],
            rows,
        )
    )
    c1 = res.get("c1", {})
    if c1 or "bare-1k" in hits:
        lines += ["", "### Cache lookup overhead (1 KiB memory hit p50 - bare p50)", ""]
        rows = []

        def p50(d: dict[str, Any], t: str) -> float:
            return float(d.get(t, {}).get("summary", {}).get("p50_ms", float("nan")))

        if "bare-1k" in hits and "mem-1k" in hits:
            b, m = p50(hits, "bare-1k"), p50(hits, "mem-1k")
            rows.append([f"-c{a.conns} (queueing included)", fmt(b, 3), fmt(m, 3), fmt(m - b, 3)])
        if "bare" in c1 and "mem" in c1:
            b, m = p50(c1, "bare"), p50(c1, "mem")
            rows.append([f"-c1 ({a.c1_seconds} s)", fmt(b, 3), fmt(m, 3), fmt(m - b, 3)])
            if "nginx" in c1:
                rows.append(
                    [
                        "-c1 nginx proxy_cache p50 (reference)",
                        "",
                        fmt(p50(c1, "nginx"), 3),
                        "",
                    ]
                )
        lines.append(md_table(["wrk", "bare p50 ms", "memory hit p50 ms", "overhead ms"], rows))
        if c1:
            lines += [""]
            lines.append(
                md_table(
                    ["-c1 target (1 KiB)", "req/s", "p50 ms", "p99 ms"],
                    [
                        [
                            t,
                            f"{v['summary']['rps']:.0f}",
                            fmt(v["summary"]["p50_ms"], 3),
                            fmt(v["summary"]["p99_ms"], 3),
                        ]
                        for t, v in c1.items()
                    ],
                )
            )
    herds = res.get("herd", {})
    if herds:
        lines += [
            "",
            f"### Thundering herd: {a.herd} concurrent GETs of one cold object",
            "",
        ]
        rows = [
            [
                k,
                h["origin_gets"],
                f"{1000 * h['seconds']:.0f}",
                json.dumps(h["status"]),
                json.dumps(h["x_cache"]),
                h["unfinished"],
                h["next_request"],
            ]
            for k, h in herds.items()
        ]
        lines.append(
            md_table(
                [
                    "target-size",
                    "upstream GETs",
                    "all done (ms)",
                    "statuses",
                    "X-Cache",
                    "unfinished",
                    "next request",
                ],
                rows,
            )
        )
    lines += ["", "Commands:", "", "```"]
    hit_urls = f"http://127.0.0.1:PORT/{BUCKET}/{{1k,100k}}.bin"
    lines.append(
        shlex.join(wrk_cmd("URL", a.conns, a.seconds, client=a.client)).replace("URL", hit_urls)
        + f"   # {a.runs} runs per target, interleaved; {a.warmup_seconds} s warm-up each"
    )
    if a.c1_seconds:
        lines.append(
            f"wrk -t1 -c1 -d{a.c1_seconds}s --latency http://127.0.0.1:PORT/{BUCKET}/1k.bin"
        )
    for k, v in res["commands"].items():
        lines.append(f"{k}: {v}")
    lines.append("")
    for k, v in res["configs"].items():
        if k not in ("nginx", "gateway"):
            lines.append(f"# {k} config\n{v}")
    lines += ["```"]
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
