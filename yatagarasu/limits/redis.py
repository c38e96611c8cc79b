"""
The shared limiter: every instance counts in one Redis, with one atomic Lua script.

The script (:data:`SCRIPT`) gets one key per limit and, per limit, its algorithm, rate and
burst. It reads Redis's own clock (``TIME``: one clock for every instance), runs the
arithmetic of :mod:`yatagarasu.limits.algorithms` for each limit, and charges every limit or
none; it answers which limit decided, what is left, and the seconds to wait (as milliseconds).
Keys expire once their state is worth nothing (the bucket is full again; both windows are
over), so Redis memory is bounded by the clients of the last few seconds.

It runs with ``EVALSHA``; on ``NOSCRIPT`` (a Redis that restarted, a ``SCRIPT FLUSH``) it is
loaded with ``SCRIPT LOAD`` and run again. Calls go through the project's Redis adapter
(:class:`yatagarasu.cache.redis_client.RedisClient`: its timeout, its breaker). When Redis
cannot answer, the ``fail_mode`` decides (``fail_open``: allowed; ``fail_closed``: refused,
the caller answers 503); every such request is counted and the outage is logged once, when it
starts, and once when Redis answers again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from yatagarasu.cache.redis_client import RedisClient, RedisError, RedisScriptMissing
from yatagarasu.interfaces import IRateLimiter
from yatagarasu.values import RateDecision, RateLimit

log = Logger(namespace="yatagarasu.limits")

SCRIPT = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local out = {}
local allowed = true
for i = 1, n do
  local algorithm = ARGV[3 * i - 2]
  local rate = tonumber(ARGV[3 * i - 1])
  local burst = tonumber(ARGV[3 * i])
  local r
  if algorithm == 'token_bucket' then
    local interval = 1 / rate
    local tolerance = burst * interval
    local tat = tonumber(redis.call('GET', KEYS[i]))
    local base = now
    if tat and tat > now then base = tat end
    local after = base + interval
    if after - now <= tolerance + 1e-9 then
      r = {1, math.floor((tolerance - (after - now)) / interval + 1e-9), after - now, 0, after}
    else
      local left = math.max(0, tolerance - (base - now))
      r = {0, math.floor(left / interval + 1e-9), base - now, after - now - tolerance}
    end
  else
    local window = burst / rate
    local position = now / window
    local number = math.floor(position)
    local s = redis.call('HMGET', KEYS[i], 'w', 'p', 'c')
    local w = tonumber(s[1])
    local previous, current = 0, 0
    if w == number then
      previous = tonumber(s[2]); current = tonumber(s[3])
    elseif w == number - 1 then
      previous = tonumber(s[3])
    end
    local estimate = previous * (1 - (position - number)) + current
    local reset = (number + 1) * window - now
    if estimate + 1 <= burst + 1e-9 then
      r = {1, math.max(0, math.floor(burst - estimate - 1 + 1e-9)), reset, 0, number,
           previous, current + 1, window}
    else
      local retry
      if current + 1 <= burst and previous > 0 then
        retry = (number + 1 - (burst - current - 1) / previous) * window - now
      else
        local needed = 0
        if current > 0 then needed = math.max(0, 1 - (burst - 1) / current) end
        retry = (number + 1 + needed) * window - now
      end
      r = {0, 0, reset, math.max(0, retry)}
    end
  end
  out[i] = r
  if r[1] == 0 then allowed = false end
end
local pick = 1
if allowed then
  for i = 1, n do
    local r = out[i]
    if ARGV[3 * i - 2] == 'token_bucket' then
      redis.call('SET', KEYS[i], string.format('%.6f', r[5]), 'PX',
                 math.ceil(r[3] * 1000) + 1000)
    else
      redis.call('HSET', KEYS[i], 'w', r[5], 'p', r[6], 'c', r[7])
      redis.call('PEXPIRE', KEYS[i], math.ceil(2 * r[8] * 1000) + 1000)
    end
    if r[2] / tonumber(ARGV[3 * i]) < out[pick][2] / tonumber(ARGV[3 * pick]) then pick = i end
  end
  return {1, pick, out[pick][2], math.ceil(out[pick][3] * 1000), 0}
end
for i = 1, n do
  if out[i][1] == 0 and (out[pick][1] == 1 or out[i][4] > out[pick][4]) then pick = i end
end
return {0, pick, out[pick][2], math.ceil(out[pick][3] * 1000), math.ceil(out[pick][4] * 1000)}
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest().encode("ascii")


@implementer(IRateLimiter)
class RedisLimiter:
    """
    Rate limits counted in Redis (see the module docstring).

    :param client: the Redis adapter (its timeout bounds every call).
    :param key_prefix: prefix of every counter key.
    :param fail_open: allow requests while Redis cannot answer (else refuse them).
    :ivar unavailable: requests decided by the fail mode so far.
    :ivar script_loads: ``SCRIPT LOAD`` calls made (after ``NOSCRIPT``).
    """

    def __init__(self, client: RedisClient, key_prefix: str, *, fail_open: bool) -> None:
        self.client = client
        self._prefix = key_prefix
        self.fail_open = fail_open
        self.unavailable = 0
        self.script_loads = 0
        self._outage = False

    def key(self, limit: RateLimit, key: str) -> bytes:
        """
        :param limit: a limit.
        :param key: what it counts (client address, user, bucket name, ``""``).
        :returns: the Redis key of its state: ``<prefix><scope>:<algorithm>:<key>``.
        """
        return f"{self._prefix}{limit.scope}:{limit.algorithm}:{key}".encode()

    def acquire(self, checks: Sequence[tuple[RateLimit, str]]) -> Deferred[RateDecision]:
        return Deferred.fromCoroutine(self._acquire(checks))

    async def _acquire(self, checks: Sequence[tuple[RateLimit, str]]) -> RateDecision:
        keys = [self.key(limit, key) for limit, key in checks]
        args: list[bytes] = []
        for limit, _ in checks:
            args += [limit.algorithm.encode(), repr(limit.rate).encode(), b"%d" % limit.burst]
        try:
            reply = await self._run(keys, args)
            decision = _decision(checks, reply)
        except RedisError as exc:
            return self._failed(checks, exc)
        if self._outage:
            self._outage = False
            log.info(
                "rate limits: Redis at {target} answers again ({count} request(s) were"
                " decided by {fail_mode})",
                target=repr(self.client.target),
                count=self.unavailable,
                fail_mode=self._mode,
            )
        return decision

    @property
    def _mode(self) -> str:
        return "fail_open" if self.fail_open else "fail_closed"

    async def _run(self, keys: list[bytes], args: list[bytes]) -> Any:
        try:
            return await self.client.evalsha(SCRIPT_SHA, keys, args)
        except RedisScriptMissing:
            self.script_loads += 1
            await self.client.script_load(SCRIPT)
            return await self.client.evalsha(SCRIPT_SHA, keys, args)

    def _failed(self, checks: Sequence[tuple[RateLimit, str]], exc: RedisError) -> RateDecision:
        self.unavailable += 1
        if not self._outage:
            self._outage = True
            log.warn(
                "rate limits: Redis at {target} cannot answer ({error}); requests are"
                " {outcome} until it does",
                target=repr(self.client.target),
                error=str(exc),
                outcome="allowed" if self.fail_open else "refused",
                fail_mode=self._mode,
            )
        limit = checks[0][0]
        return RateDecision(
            self.fail_open, limit.scope, limit.burst, 0, 1.0, retry_after=1.0, degraded=True
        )

    def stats(self) -> dict[str, tuple[int, int]]:
        return {}  # the state is in Redis (its keys expire)

    def close(self) -> Deferred[None]:
        return self.client.close()


def _decision(checks: Sequence[tuple[RateLimit, str]], reply: Any) -> RateDecision:
    """
    :param checks: the limits the script was run for.
    :param reply: its answer: ``[allowed, index (1-based), remaining, reset_ms, retry_ms]``.
    :returns: the decision.
    :raises RedisError: when the reply is not that.
    """
    try:
        allowed, index, remaining, reset_ms, retry_ms = (int(v) for v in reply)
        limit = checks[index - 1][0]
    except (TypeError, ValueError, IndexError) as exc:
        raise RedisError(f"the rate-limit script answered {reply!r}") from exc
    return RateDecision(
        bool(allowed), limit.scope, limit.burst, remaining, reset_ms / 1000, retry_ms / 1000
    )
