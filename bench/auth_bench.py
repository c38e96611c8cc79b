"""JWT cost benchmark: a 1 KiB GET on JWT-protected buckets vs the same on a public bucket,
in one proxy process, in one run.

Buckets of one proxy (all on the same origin object, ``cache_layers: [memory]``):

* ``/pub``   public                          * ``/pubnc`` public, ``cache: {enabled: false}``
* ``/hs``    ``auth: {enabled: true}``, global ``jwt: {secret: <64 bytes>}`` (HS256)
* ``/rs``    ``jwt: {enabled: true, algorithm: RS256, rsa_public_key_path: <2048-bit key>}``
* ``/hsnc``, ``/rsnc``: the same two with ``cache: {enabled: false}`` (every request goes to S3)
* ``/su``    ``auth: {enabled: true, scheme: signed_url}`` (one 32-byte key with a ``kid``)
* ``/both``  ``auth: {enabled: true, schemes: [jwt, signed_url]}`` (the global HS256 ``jwt``)

Token modes: ``reused`` (one token, ``wrk -H 'Authorization: Bearer ...'``: the proxy verifies
it once and remembers it until ``exp``) and ``fresh`` (``wrk -s`` Lua script cycling through
pre-generated tokens, more than ``jwt.verified_token_cache_size`` (10 000, FIFO), so every
request pays a signature check), and ``link``: one signed link (``?kid=&expires=&signature=``),
whose HMAC is checked on every request (signed links are not remembered).  ``pub lua`` runs
the same Lua script against the public bucket, so the Lua cost in wrk is visible on its own.

Raw output goes to ``bench/results/auth-<UTC stamp>/`` (git-ignored); the markdown table is
printed and saved there as ``results.md``.  Examples::

    .venv/bin/python bench/auth_bench.py                 # full run (~8 min + token generation)
    .venv/bin/python bench/auth_bench.py --seconds 2 --runs 1 --tokens 12000 --no-wait
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # devharness/, not installed

import jwt
from benchlib import dump, machine_facts, set_pinning
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
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
    profile,
    results_dir,
    run_wrk,
    start_proxy,
    summarize,
    wait_for_foreign_bench,
    warm,
)

from devharness.ports import free_port
from yatagarasu.auth.link_signature import sign_link

KEY = "1k.bin"
LUA = """\
-- Cycle through pre-generated tokens: one Authorization header per request.
local tokens = {{}}
for line in io.lines("{path}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. tokens[i]}})
end
"""

#: target -> (bucket path prefix, token kind or None, mode, cached)
TARGETS: dict[str, tuple[str, str | None, str, bool]] = {
    "pub": ("pub", None, "-", True),
    "pub lua": ("pub", "hs", "lua (tokens ignored)", True),
    "HS256 reused": ("hs", "hs", "reused", True),
    "HS256 fresh": ("hs", "hs", "fresh", True),
    "RS256 reused": ("rs", "rs", "reused", True),
    "RS256 fresh": ("rs", "rs", "fresh", True),
    "signed link": ("su", "su", "link", True),
    "jwt+signed link": ("both", "su", "link", True),
    "jwt+signed HS256 reused": ("both", "hs", "reused", True),
    "pub MISS": ("pubnc", None, "-", False),
    "HS256 reused MISS": ("hsnc", "hs", "reused", False),
    "RS256 reused MISS": ("rsnc", "rs", "reused", False),
    "RS256 fresh MISS": ("rsnc", "rs", "fresh", False),
}


def make_tokens(n: int, key: Any, alg: str, path: Path) -> str:
    """Write ``n`` distinct tokens (one a line, exp in 3 h); returns one more for reuse."""
    now = int(time.time())
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                jwt.encode(
                    {"sub": f"user{i}", "iat": now, "exp": now + 3 * 3600, "jti": f"{alg}-{i}"},
                    key,
                    algorithm=alg,
                )
                + "\n"
            )
    return jwt.encode({"sub": "reused", "iat": now, "exp": now + 3 * 3600}, key, algorithm=alg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_wrk_options(parser, warmup=3, wait_until="17:50")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--profile-seconds", type=int, default=10, help="py-spy on RS256 fresh")
    a = parser.parse_args()
    exit_on_sigterm()
    targets = [t for t in a.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")

    out = results_dir("auth")
    notes: list[str] = []

    def gate() -> None:
        if a.no_wait:
            return
        note = wait_for_foreign_bench(a.wait_until)
        if note and note not in notes:
            notes.append(note)

    tmp = Path(tempfile.mkdtemp(prefix="yatagarasu-authbench-"))
    origin = None
    proxy = None
    results: dict[str, Any] = {"args": vars(a)}
    try:
        # -- keys and tokens (CPU heavy: after the core benchmark is done) --------------------
        gate()
        pinning = set_pinning(not a.no_pin)
        facts = machine_facts()
        results.update(machine=facts, pinning=pinning)
        log(f"results in {out}; {pinning}")
        secret = secrets.token_hex(32)  # 64 ASCII bytes
        link_key = secrets.token_hex(16)  # 32 ASCII bytes
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub_pem = tmp / "rs256-public.pem"
        pub_pem.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        t0 = time.monotonic()
        reused = {
            "hs": make_tokens(a.tokens, secret, "HS256", tmp / "hs.tokens"),
            "rs": make_tokens(a.tokens, private, "RS256", tmp / "rs.tokens"),
        }
        log(f"{a.tokens} HS256 + {a.tokens} RS256 tokens in {time.monotonic() - t0:.0f} s")
        lua = {}
        for kind in ("hs", "rs"):
            lua[kind] = out / f"fresh-{kind}.lua"
            lua[kind].write_text(LUA.format(path=tmp / f"{kind}.tokens"))
        # -- origin and proxy -------------------------------------------------------------------
        origin = LoggedOrigin()
        port = free_port()
        rs_jwt = f"jwt: {{enabled: true, algorithm: RS256, rsa_public_key_path: {pub_pem}}}"
        nc = "cache: {enabled: false}"
        signed = f"signed_url: {{keys: [{{kid: bench, secret: {link_key}}}]}}"
        one, two = "scheme: signed_url", "schemes: [jwt, signed_url]"
        config = (
            f"server: {{address: 127.0.0.1, port: {port}}}\n"
            "logging: {level: warn}\n"
            f"jwt: {{secret: {secret}}}\n"
            "cache: {enabled: true, cache_layers: [memory], "
            "memory: {max_cache_size_mb: 256, max_item_size_mb: 10}}\n"
            "buckets:\n"
            + bucket_yaml("pub", origin.url, bucket=BUCKET)
            + bucket_yaml("hs", origin.url, "auth: {enabled: true}")
            + bucket_yaml("rs", origin.url, rs_jwt)
            + bucket_yaml("pubnc", origin.url, nc)
            + bucket_yaml("hsnc", origin.url, f"{nc}, auth: {{enabled: true}}")
            + bucket_yaml("rsnc", origin.url, f"{nc}, {rs_jwt}")
            + bucket_yaml("su", origin.url, f"auth: {{enabled: true, {one}, {signed}}}")
            + bucket_yaml("both", origin.url, f"auth: {{enabled: true, {two}, {signed}}}")
        )
        expires = int(time.time()) + 6 * 3600
        links = {
            prefix: sign_link(link_key.encode(), f"/{prefix}/{KEY}", expires, kid="bench").url
            for prefix in ("su", "both")
        }
        proxy = start_proxy("proxy", config, out, f"/pub/{KEY}", port)
        ours = [origin.process.pid, proxy.pid]

        def spec(t: str) -> tuple[str, list[str], list[str]]:
            prefix, kind, mode, _cached = TARGETS[t]
            url = f"{proxy.url}/{prefix}/{KEY}"
            if kind is None:
                return url, [], []
            if mode == "link":
                return f"{proxy.url}{links[prefix]}", [], []
            if mode == "reused":
                hdr = f"Authorization: Bearer {reused[kind]}"
                return url, ["-H", hdr], [hdr]
            return url, ["-s", str(lua[kind])], [f"Authorization: Bearer {reused[kind]}"]

        # -- checks: 401 without a token, HIT (or MISS) with one ------------------------------
        checks: dict[str, Any] = {}
        for t in targets:
            url, _, hdrs = spec(t)
            status, xc, seen = warm(url, hdrs, tries=5 if TARGETS[t][3] else 1)
            checks[t] = seen
            log(f"check {t}: {seen}")
            want = "HIT" if TARGETS[t][3] else ""  # no X-Cache where caching is off
            if status != 200 or xc != want:
                notes.append(f"{t}: expected 200 {want}, got {seen[-3:]}")
        for prefix in ("hs", "rs", "su", "both"):
            status, _, _ = warm(f"{proxy.url}/{prefix}/{KEY}", tries=1)
            checks[f"{prefix} without token"] = status
            if status != 401:
                notes.append(f"/{prefix} without a token answered {status}, not 401")
        results["checks"] = checks
        for t in targets:  # warm-up, not recorded
            url, extra, _ = spec(t)
            run_wrk(t, url, a.conns, a.warmup_seconds, proxy.pid, ours, extra)
        time.sleep(1.5)  # requests cut off by the last warm-up finish before counting
        # -- measure ---------------------------------------------------------------------------
        runs: dict[str, list[Run]] = {t: [] for t in targets}
        for i in range(a.runs):
            for t in targets:
                gate()
                url, extra, _ = spec(t)
                before = origin.count(KEY)
                r = run_wrk(t, url, a.conns, a.seconds, proxy.pid, ours, extra)
                time.sleep(1.0)
                r.origin_delta = origin.count(KEY) - before
                r.cmd = r.cmd.replace(reused.get("hs", "-"), "<HS256 token>").replace(
                    reused.get("rs", "-"), "<RS256 token>"
                )
                for link in links.values():
                    r.cmd = r.cmd.replace(link.partition("?")[2], "<signed link query>")
                (out / f"wrk-{t.replace(' ', '-')}-{i}.txt").write_text(r.result.raw)
                runs[t].append(r)
                log(
                    f"{t} run {i}: {r.result.rps:.0f} req/s p50 {r.result.p50_ms:.2f} ms "
                    f"p99 {r.result.p99_ms:.2f} ms errors {r.result.errors} non2xx "
                    f"{r.result.non2xx} CPU {100 * r.cpu_util:.0f} % origin GETs "
                    f"+{r.origin_delta} foreign {r.foreign_cores:.2f} cores"
                )
        results["runs"] = {t: {"summary": summarize(v), "runs": v} for t, v in runs.items()}
        if a.profile_seconds > 0 and "RS256 fresh" in targets:
            gate()
            url, extra, _ = spec("RS256 fresh")
            if profile("rs256-fresh", url, proxy.pid, out, a.profile_seconds, extra):
                log(f"profile: {out / 'profile-rs256-fresh.txt'}")
    finally:
        if proxy is not None:
            proxy.stop()
        if origin is not None:
            origin.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results["notes"] = notes
    results["config"] = (
        config.replace(secret, "<64-byte secret>")
        .replace(link_key, "<32-byte key>")
        .replace(str(tmp), "TMP")
    )
    dump(out / "results.json", results)
    md = table(results, a, targets, facts_md(facts, pinning))
    (out / "results.md").write_text(md)
    print(md)


def table(res: dict[str, Any], a: argparse.Namespace, targets: list[str], facts: str) -> str:
    runs = res["runs"]
    lines = [
        f"### JWT and signed-link cost, 1 KiB GET (wrk, 1 thread, {a.conns} connections, "
        f"{a.seconds} s, median of {a.runs})",
        "",
        facts,
        "",
    ]
    rows = []
    for t in targets:
        sm = runs[t]["summary"]
        prefix, _kind, mode, cached = TARGETS[t]
        base_name = "pub" if cached else "pub MISS"
        if mode == "fresh" and cached and "pub lua" in runs:
            base_name = "pub lua"
        base = runs.get(base_name, {}).get("summary", {}).get("rps", float("nan"))
        rows.append(
            [
                t,
                f"/{prefix}",
                "memory HIT" if cached else "no cache (S3 every time)",
                mode,
                f"{sm['rps']:.0f}",
                fmt(sm["p50_ms"]),
                fmt(sm["p99_ms"]),
                f"{pct(sm['rps'], base)} of {base_name}" if t != base_name else "100 %",
                f"{100 * sm['cpu_util']:.0f} %",
                "+".join(str(r.origin_delta) for r in runs[t]["runs"]),
                f"{sm['errors']}/{sm['non2xx']}",
                fmt(sm["foreign_max"]),
            ]
        )
    lines.append(
        md_table(
            [
                "target",
                "bucket",
                "path",
                "token",
                "req/s",
                "p50 ms",
                "p99 ms",
                "ratio",
                "server CPU",
                "origin GETs",
                "sock err/non-2xx",
                "foreign cores (max)",
            ],
            rows,
        )
    )
    lines += [
        "",
        f"Commands (one per target; {a.warmup_seconds} s warm-up each, runs interleaved):",
        "",
        "```",
    ]
    for t in targets:
        lines.append(f"# {t}\n{runs[t]['runs'][0].cmd}")
    lines += [
        "",
        f"# fresh-*.lua cycles through {a.tokens} pre-generated tokens (> the 10 000 verified-"
        "token cache, FIFO)",
        LUA.format(path="TOKENS_FILE").rstrip(),
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
