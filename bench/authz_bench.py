"""Authorization cost benchmark: a 1 KiB memory-cache hit on a JWT bucket, without and with an
OPA authorizer, in one proxy process, in one run.

Buckets of one proxy (all on the same origin object, ``cache_layers: [memory]``, HS256 with one
reused token):

* ``/hs``      ``auth: {enabled: true}``: no authorizer (the baseline)
* ``/opa``     plus ``authorization: {type: opa, opa_cache_ttl_seconds: 300}``: every request
  after the first is answered from the decision cache (one OPA call in the whole run)
* ``/opa0``    plus ``opa_cache_ttl_seconds: 0``: every request asks OPA. The OPA here is the
  tests' fake (``devharness/json_service.py``, Python's ``http.server`` in this process), so
  this row measures that fake more than the proxy: read it as "a policy round trip per
  request", not as OPA's speed.

Raw output goes to ``bench/results/authz-<UTC stamp>/`` (git-ignored); the markdown table is
printed and saved there as ``results.md``.  Example::

    .venv/bin/python bench/authz_bench.py --runs 3 --seconds 10
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

import jwt
from benchlib import dump, machine_facts, set_pinning
from proxylib import (
    BUCKET,
    LoggedOrigin,
    Run,
    add_wrk_options,
    bucket_yaml,
    exit_on_sigterm,
    facts_md,
    fmt,
    log,
    md_table,
    pct,
    results_dir,
    run_wrk,
    start_proxy,
    summarize,
    warm,
)

from devharness.json_service import JsonCall, JsonService
from devharness.ports import free_port

KEY = "1k.bin"
POLICY = "bench/allow"
#: target -> bucket path prefix
TARGETS = {"HS256, no authorizer": "hs", "HS256 + OPA, cached decision": "opa",
           "HS256 + OPA, asked every request": "opa0"}  # fmt: skip


def allow(call: JsonCall) -> tuple[int, Any]:
    return 200, {"result": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser, seconds=10, warmup=3)
    a = parser.parse_args()
    exit_on_sigterm()
    out = results_dir("authz")
    notes: list[str] = []
    results: dict[str, Any] = {"args": vars(a)}
    origin = proxy = opa = None
    try:
        pinning = set_pinning(not a.no_pin)
        facts = machine_facts()
        results.update(machine=facts, pinning=pinning)
        secret = secrets.token_hex(32)
        now = int(time.time())
        token = jwt.encode({"sub": "bench", "iat": now, "exp": now + 3600}, secret, "HS256")
        header = f"Authorization: Bearer {token}"
        opa = JsonService(allow).start()
        origin = LoggedOrigin()
        port = free_port()
        authz = f"type: opa, opa_url: '{opa.url}', opa_policy_path: {POLICY}"
        config = (
            f"server: {{address: 127.0.0.1, port: {port}}}\n"
            "logging: {level: warn}\n"
            f"jwt: {{secret: {secret}}}\n"
            "cache: {enabled: true, cache_layers: [memory], "
            "memory: {max_cache_size_mb: 256, max_item_size_mb: 10}}\n"
            "buckets:\n"
            + bucket_yaml("hs", origin.url, "auth: {enabled: true}", bucket=BUCKET)
            + bucket_yaml(
                "opa",
                origin.url,
                f"auth: {{enabled: true}}, authorization: {{{authz}, opa_cache_ttl_seconds: 300}}",
            )
            + bucket_yaml(
                "opa0",
                origin.url,
                f"auth: {{enabled: true}}, authorization: {{{authz}, opa_cache_ttl_seconds: 0,"
                " opa_timeout_ms: 1000}",
            )
        )
        proxy = start_proxy("proxy", config, out, f"/hs/{KEY}", port)
        ours = [origin.process.pid, proxy.pid]
        for t, prefix in TARGETS.items():
            status, xc, seen = warm(f"{proxy.url}/{prefix}/{KEY}", [header], tries=5)
            log(f"check {t}: {seen}")
            if status != 200 or xc != "HIT":
                notes.append(f"{t}: expected 200 HIT, got {seen[-3:]}")
        for t, prefix in TARGETS.items():  # warm-up, not recorded
            run_wrk(t, f"{proxy.url}/{prefix}/{KEY}", a.conns, a.warmup_seconds, proxy.pid, ours,
                    ["-H", header])  # fmt: skip
        time.sleep(1.5)
        runs: dict[str, list[Run]] = {t: [] for t in TARGETS}
        calls: dict[str, list[int]] = {t: [] for t in TARGETS}
        for i in range(a.runs):
            for t, prefix in TARGETS.items():
                before = len(opa.calls)
                r = run_wrk(t, f"{proxy.url}/{prefix}/{KEY}", a.conns, a.seconds, proxy.pid,
                            ours, ["-H", header])  # fmt: skip
                time.sleep(1.0)
                calls[t].append(len(opa.calls) - before)
                r.cmd = r.cmd.replace(token, "<HS256 token>")
                (out / f"wrk-{prefix}-{i}.txt").write_text(r.result.raw)
                runs[t].append(r)
                log(f"{t} run {i}: {r.result.rps:.0f} req/s p50 {r.result.p50_ms:.2f} ms "
                    f"errors {r.result.errors} non2xx {r.result.non2xx} OPA calls "
                    f"+{calls[t][-1]} foreign {r.foreign_cores:.2f} cores")  # fmt: skip
        results["runs"] = {t: {"summary": summarize(v), "runs": v} for t, v in runs.items()}
        results["opa_calls"] = calls
    finally:
        if proxy is not None:
            proxy.stop()
        if origin is not None:
            origin.close()
        if opa is not None:
            opa.stop()
    results["notes"] = notes
    results["config"] = config.replace(secret, "<64-byte secret>")
    dump(out / "results.json", results)
    md = table(results, a, facts_md(facts, pinning))
    (out / "results.md").write_text(md)
    print(md)


def table(res: dict[str, Any], a: argparse.Namespace, facts: str) -> str:
    runs = res["runs"]
    base = runs["HS256, no authorizer"]["summary"]["rps"]
    rows = []
    for t, prefix in TARGETS.items():
        sm = runs[t]["summary"]
        rows.append([t, f"/{prefix}", f"{sm['rps']:.0f}", fmt(sm["p50_ms"]), fmt(sm["p99_ms"]),
                     pct(sm["rps"], base), f"{100 * sm['cpu_util']:.0f} %",
                     "+".join(str(c) for c in res["opa_calls"][t]),
                     f"{sm['errors']}/{sm['non2xx']}", fmt(sm["foreign_max"])])  # fmt: skip
    lines = [
        f"### Authorization cost, 1 KiB memory hit (wrk, 1 thread, {a.conns} connections, "
        f"{a.seconds} s, median of {a.runs})",
        "",
        facts,
        "",
        md_table(
            [
                "target",
                "bucket",
                "req/s",
                "p50 ms",
                "p99 ms",
                "vs no authorizer",
                "server CPU",
                "OPA calls per run",
                "sock err/non-2xx",
                "foreign cores (max)",
            ],
            rows,
        ),
        "",
        "Commands (runs interleaved; the same for every bucket):",
        "",
        "```",
        runs["HS256, no authorizer"]["runs"][0].cmd,
        "",
        "# proxy config",
        res["config"].rstrip(),
        "```",
    ]
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
