"""Development harness for Yatagarasu: the local demo and the helpers tests and benchmarks share.

It lives at the repository root and is **not** installed with the proxy (the wheel holds
``yatagarasu`` and ``twisted/plugins`` only), because it needs the ``dev`` extra (moto, boto3).
``tests/`` and ``bench/`` import it from the checkout; ``make demo`` runs
``python -m devharness.demo``.

- :mod:`devharness.ports`: loopback address, free ports.
- :mod:`devharness.waiting`: bounded polling and :class:`~devharness.waiting.StartupError`.
- :mod:`devharness.http_client`: one fully read HTTP request.
- :mod:`devharness.processes`: the one child-process runner (log file, SIGTERM then SIGKILL).
- :mod:`devharness.moto_s3`: a moto S3 server with SigV4 checking on.
- :mod:`devharness.redis_server`: a private redis-server.
- :mod:`devharness.proxy_config`: proxy config dicts pointing at moto.
- :mod:`devharness.twistd`: the real ``twistd yatagarasu`` process.
- :mod:`devharness.get_load`: a bounded load of GETs from a few client threads.
- :mod:`devharness.certificates`: a self-signed certificate for TLS tests.
- :mod:`devharness.demo_content` and :mod:`devharness.demo`: the demo.

Every wait in here is bounded in time and in number of tries, and only 127.0.0.1 is contacted.
"""
