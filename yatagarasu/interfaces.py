"""
The zope interfaces that plugins implement. Docstrings are the contract.

Plugins are found with ``twisted.plugin.getPlugins`` (see :mod:`yatagarasu.discovery`): a
package installed beside yatagarasu provides a module in ``yatagarasu/plugins/`` (a namespace
extended with ``pluginPackagePaths``) holding objects that provide ``twisted.plugin.IPlugin``
and one of the ``*Factory`` interfaces below (cache layers, auth schemes, authorizers, audit
sinks). The
configuration names them.

This module is the floor of the package: it imports only the values the contracts exchange
(:mod:`yatagarasu.values`), Twisted and zope. The optional interfaces (``ISwitchableCacheLayer``,
``IDefaultTtlCacheLayer``, ``IErrorCountingCacheLayer``, ``IPurgeBroadcaster``,
``IImmediate*``, ``IApplicableAuthScheme``, ``IAdminAuthSource``) declare everything else the
proxy reads from a plugin when the plugin provides them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface

from yatagarasu.values import (
    AuditRecord,
    AuthorizationQuery,
    CacheEntry,
    CacheKey,
    Decision,
    Identity,
    LayerStats,
    RateDecision,
    RateLimit,
)


class ICacheWriter(Interface):
    """Streams one large body into a layer while it is being served."""

    def write(data: bytes) -> None:
        """
        Append body bytes. Must not block; errors are remembered and reported by ``commit``.

        :param data: the next body bytes.
        """

    def commit(entry: CacheEntry) -> Deferred[None]:
        """
        Make the written body visible under the writer's key, atomically.

        :param entry: headers and freshness; its ``body`` is ignored.
        :returns: fires once committed (or fails; the caller logs and counts it).
        """

    def abort() -> None:
        """Throw away what was written (the response failed or grew too large)."""


class ICacheLayer(Interface):
    """
    One cache layer (memory, disk, redis, or a third-party one).

    A failure of any call is treated by the tiered cache as a miss (logged and counted), never
    as a failed request. Entries past ``expires_at`` may still be returned: freshness is
    decided by the caller (expired entries are revalidated, or served stale on S3 errors).
    """

    name = Attribute("The layer's name in the configuration, e.g. ``'memory'``.")
    max_item_size = Attribute("Largest body, in bytes, this layer accepts.")

    def get(key: CacheKey) -> Deferred[CacheEntry | None]:
        """
        :param key: what to look up.
        :returns: the entry, or ``None`` on a miss. Its body may be ``bytes``, a
            :class:`~yatagarasu.values.FileBody` or a :class:`~yatagarasu.values.MappedBody`
            (the memory layer's large bodies).
        """

    def set(key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        """
        Store (or replace) an entry. A layer may decline it (too large, admission policy).

        :param key: the key.
        :param entry: the entry; its ``body`` is ``bytes``.
        """

    def open_writer(key: CacheKey) -> ICacheWriter | None:
        """
        Start streaming a body too large to buffer.

        :param key: the key.
        :returns: a writer, or ``None`` when this layer does not stream.
        """

    def delete(key: CacheKey) -> Deferred[bool]:
        """
        :param key: the key.
        :returns: whether an entry was there.
        """

    def purge(bucket: str | None, prefix: str | None) -> Deferred[int]:
        """
        Remove many entries.

        :param bucket: a bucket name, or ``None`` for every bucket.
        :param prefix: with a bucket, only keys starting with this prefix (``None``: all).
        :returns: how many entries were removed.
        """

    def stats(bucket: str | None) -> LayerStats:
        """
        :param bucket: a bucket name, or ``None`` for the whole layer.
        :returns: the counters, synchronously (kept in memory).
        """

    def services() -> list[IService]:
        """
        :returns: background services the layer needs (a start-up scan, a sweeper...),
            started and stopped with the proxy; usually ``[]``.
        """

    def close() -> Deferred[None]:
        """Release connections and files."""


class IImmediateCacheLayer(ICacheLayer):
    """
    A layer that answers lookups at once, in the calling thread, without waiting on anything:
    from memory, or from a local file read with a few bounded system calls (disk).

    The tiered cache reads such a layer with :meth:`lookup` instead of :meth:`get`, so a hit
    in it is served without a Deferred: on the hot path of a proxy whose memory hits should
    cost little more than a static resource, that is a measurable part of the work.
    """

    def lookup(key: CacheKey) -> CacheEntry | None:
        """
        What :meth:`get` would give, returned directly (same counting, same expiry).

        :param key: what to look up.
        :returns: the entry, or ``None``.
        """


class IPurgeBroadcaster(Interface):
    """
    A shared cache layer (Redis) that tells the other proxy instances about purges, so they
    drop what their own private layers (memory, disk) hold.
    """

    def subscribe_purges(
        callback: Callable[[str | None, str | None, str | None], object],
    ) -> IService:
        """
        :param callback: ``(bucket, prefix, key)`` of every purge made by *another* instance
            (``bucket`` ``None``: everything; ``key`` set: one object; else keys starting
            with ``prefix``, all when ``None``).
        :returns: a service delivering events while it runs (not started yet).
        """


class ISwitchableCacheLayer(Interface):
    """A layer whose section has an ``enabled`` switch (the built-in memory and disk layers)."""

    enabled = Attribute(
        "Whether the layer's section turns it on. A layer listed in ``cache.cache_layers`` "
        "must have it ``True`` (else the configuration is refused, naming "
        "``cache.<name>.enabled``); layers without this interface count as enabled."
    )


class IDefaultTtlCacheLayer(Interface):
    """A layer that has its own default freshness lifetime (memory's ``default_ttl_seconds``)."""

    default_ttl_seconds = Attribute(
        "Seconds an entry stays fresh when S3 gives no lifetime and ``cache.ttl_seconds`` is "
        "unset; the first layer in ``cache.cache_layers`` that provides this interface decides "
        "(3600 when none does)."
    )


class IErrorCountingCacheLayer(Interface):
    """A layer that counts its own failures (I/O, connections) besides raising them."""

    errors = Attribute(
        "How many operations failed so far (an ``int``, only growing); added to the failures "
        "the tiered cache counted in ``yatagarasu_cache_errors_total{layer}``."
    )


class ICacheLayerFactory(Interface):
    """Builds a cache layer from its configuration mapping (``cache.<name>``)."""

    name = Attribute("The name used in ``cache.cache_layers``.")

    def build(settings: Mapping[str, Any], path: str, reactor: Any) -> ICacheLayer:
        """
        Validate ``settings`` and build the layer. Nothing is connected or written yet.

        :param settings: the layer's mapping from the configuration (may be empty).
        :param path: its dotted key path (``cache.memory``), for errors.
        :param reactor: the reactor (time, TCP).
        :raises yatagarasu.errors.ConfigError: naming the dotted path of a bad value.
        """


class IAuthScheme(Interface):
    """Turns a request into an identity, or refuses it."""

    name = Attribute("The scheme's name in the configuration, e.g. ``'jwt'``.")

    def authenticate(request: IRequest) -> Deferred[Identity]:
        """
        :param request: the request (read its headers and args; do not write to it).
        :returns: the identity, or fails with ``AuthenticationRequired`` (401, no
            credentials), ``InvalidCredentials`` (401 ``invalid_token``) or ``Forbidden``
            (403: valid credentials, not allowed), from :mod:`yatagarasu.errors`.
        """

    def services() -> list[IService]:
        """
        :returns: background services the scheme needs (key refresh timers...), started and
            stopped with the proxy; usually ``[]``.
        """


class IImmediateAuthScheme(IAuthScheme):
    """
    A scheme that can often answer without waiting (a token it has verified before).

    The bucket resource asks :meth:`authenticate_now` first and calls ``authenticate`` only
    when it returns ``None``: an authenticated cache hit then needs no Deferred at all.
    """

    def authenticate_now(request: IRequest) -> Identity | None:
        """
        The identity ``authenticate`` would give, when it is known at once and allowed.

        :param request: the incoming request (not to be written to).
        :returns: the identity, or ``None`` when ``authenticate`` must be asked (unknown or
            expired credentials, a refusal: ``authenticate`` reports those).
        """


class IApplicableAuthScheme(IAuthScheme):
    """
    A scheme that can tell whether a request carries its kind of credentials at all.

    A bucket listing several schemes (``auth.schemes: [jwt, signed_url]``) uses the first
    that applies: present but bad credentials are refused by that scheme (401), never passed
    on to the next one. A listed scheme without this interface is asked ``authenticate``, and
    counts as not applying when that fails with ``AuthenticationRequired``.
    """

    def applies(request: IRequest) -> bool:
        """
        :param request: the incoming request (not to be written to).
        :returns: whether the request carries this scheme's credentials, well-formed or not
            (a bearer token, a ``signature`` query parameter).
        """


class IAdminAuthSource(Interface):
    """A scheme whose settings may also say who may use the admin API (jwt's ``admin_claims``)."""

    def admin_scheme() -> IAuthScheme | None:
        """
        The scheme guarding ``/admin/...``, built from the same settings with the admin rules.

        :returns: the admin scheme, or ``None`` when the settings grant no admin access (then
            every admin route answers 403).
        """


class IAuthSchemeFactory(Interface):
    """Builds an auth scheme for one bucket (or the admin API) from its settings."""

    name = Attribute("The name used in ``auth.scheme``.")

    def build(settings: Mapping[str, Any], path: str, reactor: Any) -> IAuthScheme:
        """
        Validate ``settings`` and build the scheme. Key files are read here, once.

        :param settings: the scheme's mapping from the configuration.
        :param path: its dotted key path, for errors.
        :param reactor: the reactor (time, TCP for JWKS and the like).
        :raises yatagarasu.errors.ConfigError: naming the dotted path of a bad value.
        """


class IAuthorizer(Interface):
    """
    Decides whether an authenticated request may read an object (``buckets[].authorization``):
    an external policy service such as OPA or OpenFGA, or a third-party one.

    Asked after authentication (DESIGN.md §2 step 8), before the cache: a cached object is
    only served to a request the authorizer allows.
    """

    name = Attribute("The authorizer's type in the configuration, e.g. ``'opa'``.")

    def authorize(query: AuthorizationQuery) -> Deferred[Decision]:
        """
        :param query: the request to decide on.
        :returns: the decision. It should not fail: a policy service that gives no usable
            answer (timeout, refused connection, bad document) becomes a decision with
            ``result="error"`` and ``allowed`` set by the authorizer's fail mode. A failure
            anyway is answered 500 (never allowed). Cancelling it (the client went away)
            cancels the call in flight.
        """

    def close() -> Deferred[None]:
        """Release connections (the generation that built it is being retired)."""


class IImmediateAuthorizer(IAuthorizer):
    """
    An authorizer that can often decide without waiting (a decision it remembers).

    The bucket resource asks :meth:`authorize_now` first and calls ``authorize`` only when it
    returns ``None``: an authorized cache hit then needs no Deferred at all.
    """

    def authorize_now(query: AuthorizationQuery) -> Decision | None:
        """
        :param query: the request to decide on.
        :returns: the decision ``authorize`` would give, when it is known at once; ``None``
            when ``authorize`` must be asked.
        """


class IAuthorizerFactory(Interface):
    """Builds an authorizer for one bucket from ``buckets[].authorization``."""

    name = Attribute("The name used in ``authorization.type``.")

    def build(settings: Mapping[str, Any], path: str, reactor: Any) -> IAuthorizer:
        """
        Validate ``settings`` and build the authorizer. Nothing is connected yet.

        :param settings: the ``authorization`` mapping without its ``type`` key.
        :param path: its dotted key path (``buckets[0].authorization``), for errors.
        :param reactor: the reactor (time, TCP).
        :raises yatagarasu.errors.ConfigError: naming the dotted path of a bad value.
        """


class IAuditSink(Interface):
    """
    Where audit records go (a file, syslog, or a third-party destination).

    ``write`` is called on the reactor thread once per request, after the response ended: it
    must only queue the record (no I/O, no serialization of consequence). The sink's services
    deliver what was queued; stopping them (at shutdown, after the drain) delivers the rest.
    A failure to deliver is logged and counted, never raised to the request.
    """

    name = Attribute("The sink's name in ``audit_log.outputs``, e.g. ``'file'``.")
    counts = Attribute(
        "Records by result so far: a mapping of ``'written'``, ``'failed'`` and ``'dropped'``"
        " to ``int`` (only growing), read at scrape time for"
        " ``yatagarasu_audit_records_total{sink,result}``."
    )

    def write(record: AuditRecord) -> None:
        """
        Queue one record. Must not block.

        :param record: the request's record, already redacted.
        """

    def reopen() -> None:
        """
        Reopen files or connections (``SIGUSR1``, for logrotate users); a no-op for sinks
        with nothing to reopen.
        """

    def services() -> list[IService]:
        """
        :returns: the services that deliver queued records (a flush timer, a connection),
            started with the proxy and stopped after the drain; stopping them delivers what is
            still queued.
        """


class ISpoolingAuditSink(IAuditSink):
    """
    An audit sink that keeps batches in a local spool until their destination has them (the
    built-in ``s3`` sink); read at scrape time for ``yatagarasu_audit_spool_files``,
    ``yatagarasu_audit_spool_bytes`` and ``yatagarasu_audit_upload_failures_total``.
    """

    spool_files = Attribute("Batches in the spool now (``int``).")
    spool_bytes = Attribute("Their size in bytes (``int``).")
    upload_failures = Attribute("Failed uploads so far (``int``, only growing; retries count).")


class IAuditSinkFactory(Interface):
    """Builds an audit sink from its configuration mapping (``audit_log.<name>``)."""

    name = Attribute("The name used in ``audit_log.outputs``.")

    def build(settings: Mapping[str, Any], path: str, reactor: Any) -> IAuditSink:
        """
        Validate ``settings`` and build the sink. Nothing is opened or connected yet.

        :param settings: the sink's mapping from the configuration (may be empty).
        :param path: its dotted key path (``audit_log.file``), for errors.
        :param reactor: the reactor (time, threads, TCP/UDP).
        :raises yatagarasu.errors.ConfigError: naming the dotted path of a bad value.
        """


class ISiblings(Interface):
    """
    The other worker processes of this instance (``server.workers`` > 1), as one worker sees
    them through its control channel to the parent process.
    """

    worker_id = Attribute("This worker's number, 0..workers-1.")
    workers = Attribute("How many workers the instance runs.")

    def serve(topic: str, answerer: Callable[[Any], Any]) -> None:
        """
        :param topic: a :meth:`gather` topic this worker answers.
        :param answerer: this worker's answer for an argument (JSON values in and out).
        """

    def receive_purges(callback: Callable[[str | None, str | None, str | None], object]) -> None:
        """
        Relay purges between the workers through the parent: ``callback(bucket, prefix,
        key)`` receives each one a sibling made. Not called when a shared layer (Redis)
        broadcasts purges already.
        """

    def announce_purge(bucket: str | None, prefix: str | None, key: str | None) -> Deferred[None]:
        """
        Tell the other workers to drop entries this worker purged (``bucket`` ``None``:
        everything; ``key`` set: one object; else keys starting with ``prefix``).

        :returns: fires once every running sibling has dropped them (or did not answer in
            time).
        """

    def announce_reload() -> None:
        """Tell the parent to reload the other workers (this one reloaded already)."""

    def all_up() -> bool:
        """:returns: whether every worker of the instance is running."""

    def gather(topic: str, argument: Any) -> Deferred[dict[int, Any]]:
        """
        Ask every running worker (this one included) for its answer on ``topic``.

        :param topic: what to ask (``metrics``, ``stats``).
        :param argument: a JSON value passed to each worker's answerer.
        :returns: each worker's answer, by worker number (those that did not answer in time
            are missing).
        """


class IRateLimiter(Interface):
    """
    Counts requests against rate limits (:class:`yatagarasu.values.RateLimit`), keeping the
    state of each (limit, key) pair: in this process's memory, or shared (Redis).
    """

    def acquire(
        checks: Sequence[tuple[RateLimit, str]],
    ) -> RateDecision | Deferred[RateDecision]:
        """
        Count one request against every ``(limit, key)`` in ``checks``, atomically: either
        every limit has room and each is charged, or none is charged.

        :param checks: the limits and the key each one counts (``""`` for ``global``, the
            client address for ``per_ip``, the bucket name, the user).
        :returns: the decision, at once (a local limiter) or later (a shared one); a shared
            limiter that cannot reach its store answers a ``degraded`` decision, never fails.
        """

    def stats() -> Mapping[str, tuple[int, int]]:
        """
        :returns: per client scope (``per_ip``, ``per_user``) whose state this process keeps:
            the keys kept now and the keys forgotten so far because the table was full
            (empty for a limiter that keeps no state in the process).
        """

    def close() -> Deferred[None]:
        """Release connections (a shared limiter); fires when done."""


class ICredentialProvider(Interface):
    """
    The S3 credentials of one upstream (a bucket, or one of its replicas): fixed ones, or
    temporary ones fetched (instance metadata, ECS, STS...) and refreshed before they expire.
    A failed fetch is never taken for credentials: the provider has none until a fetch works.
    """

    source = Attribute(
        "the source name (static, env, profile, instance, ecs, web_identity, anonymous)"
    )

    def current() -> Any:
        """
        :returns: the credentials to sign with now (a
            :class:`yatagarasu.s3.sigv4.Credentials`), or ``None``: requests go unsigned
            (``anonymous``). Never waits.
        :raises yatagarasu.errors.UpstreamError: 503 with ``Retry-After`` when the provider
            has no usable credentials now.
        """

    def usable() -> bool:
        """:returns: whether :meth:`current` would return credentials now."""

    def pending() -> bool:
        """:returns: whether the provider has never had credentials and a first fetch is
        due or running (a request may :meth:`wait` for it)."""

    def wait() -> Deferred[None]:
        """
        Wait for the fetch in flight (starting the first one when none ran yet); every caller
        meanwhile shares that one fetch.

        :returns: fires (never fails) when the fetch has ended, successfully or not.
        """

    def status() -> Mapping[str, Any]:
        """
        :returns: what ``/ready`` shows: ``source``, ``state`` (``ready``, ``fetching``,
            ``failed``), ``expires_in_seconds`` (``None``: they do not expire) and
            ``last_error`` (never a secret).
        """


class IAccessEntry(Interface):
    """
    One request's access-log entry, as an :class:`IAccessLog` receives it: its text and its
    fields are made only when asked for (a text line needs a few of the fields, a JSON line
    or a twisted.logger event all of them), and its text may be made later, from values that
    keep nothing of the request alive.
    """

    template = Attribute("the line's text as a ``str.format`` template over :meth:`fields`")

    def fields() -> dict[str, Any]:
        """:returns: the request's fields (``request_id``, ``status``...), data only; a new
        dict at each call. Only during :meth:`IAccessLog.write`."""

    def message_values() -> Any:
        """:returns: what ``format_message`` makes the text from: plain values (text,
        bytes, numbers), nothing that refers to the request. Only during
        :meth:`IAccessLog.write`."""

    format_message = Attribute(
        "A function of what :meth:`message_values` returned, maybe much later: the line's"
        " text, ``template.format_map(fields())`` made without the fields. It uses nothing"
        " of the entry (a log may keep it)."
    )


class IAccessLog(Interface):
    """
    Where the access log's lines go: one per request, written once its response has ended.
    """

    def write(when: float, entry: IAccessEntry) -> None:
        """
        Log one request.

        :param when: when its response ended (epoch seconds, from the injected clock).
        :param entry: its entry: its fields and message values are read during the call; its
            ``format_message`` may be kept and called later.
        """

    def flush() -> None:
        """Write whatever is held back now."""
