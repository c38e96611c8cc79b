"""
``yatagarasu-config``: tools for configuration files.

``yatagarasu-config migrate FILE [-o OUT]`` rewrites a Rust Yatagarasu configuration as this
version's YAML (standard output, or ``OUT``) and reports what it did with each Rust key
(:mod:`yatagarasu.config.migrate`). Exit status 0 when migrated, 1 when the file cannot be
read or migrated, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from yatagarasu.config.migrate import migrate_file
from yatagarasu.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    """
    :param argv: the arguments after the program name (default: ``sys.argv[1:]``).
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(prog="yatagarasu-config", description=__doc__.split("\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser(
        "migrate", help="rewrite a Rust Yatagarasu configuration file as this version's YAML"
    )
    migrate.add_argument("file", help="the Rust Yatagarasu configuration file")
    migrate.add_argument("-o", "--output", help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    return _migrate(args.file, args.output, sys.stdout, sys.stderr)


def _migrate(path: str, output: str | None, stdout: TextIO, stderr: TextIO) -> int:
    try:
        migration = migrate_file(path)
    except ConfigError as e:
        stderr.write(f"yatagarasu-config: cannot migrate {path}: {e}\n")
        return 1
    text = migration.yaml()
    report = stderr
    if output is None:
        stdout.write(text)
        stdout.flush()
    else:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            stderr.write(f"yatagarasu-config: cannot write {output}: {e.strerror}\n")
            return 1
        report = stdout
    for note in migration.notes:
        report.write(f"{note}\n")
    changed = sum(note.changes for note in migration.notes)
    written = output or "the result"
    report.write(
        f"{changed} key(s) changed, {len(migration.notes) - changed} kept; check {written} with:"
        f" twistd yatagarasu --config {output or 'FILE'} --check\n"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
