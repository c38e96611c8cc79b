"""The methods a read-only proxy answers."""

#: answered on object paths and the proxy's own read-only routes
READ_METHODS = (b"GET", b"HEAD")

#: the ``Allow`` value of bucket paths (``OPTIONS``: CORS preflight)
BUCKET_METHODS = b"GET, HEAD, OPTIONS"
