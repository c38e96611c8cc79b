"""What to run when a tool the tests need (moto, redis-server, the proxy) is missing."""

INSTALL_HINT = (
    "run `make test` (it creates .venv with the dev extra and installs redis-server with "
    "apt-get when missing), or by hand: `apt-get install -y redis-server` and "
    "`pip install -e '.[dev]' --config-settings editable_mode=compat`"
)
