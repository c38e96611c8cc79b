"""
Whether the process can write where the configuration says, checked without writing.

``--check`` and start-up run these, so that a log file or a cache directory the process could
not create stops it with one line naming the key, instead of a traceback or a layer that
silently stores nothing. Nothing is created. A permission the process lacks is only seen
when it does not run as root (root passes every permission check but a read-only mount).
"""

from __future__ import annotations

import os


def cannot_append(file: str) -> str | None:
    """
    :param file: a file the process will open for appending (creating it if missing).
    :returns: why that would fail, or ``None``.
    """
    if not file.strip() or "\0" in file or file.endswith(os.sep):
        return f"{file!r} is not a file path"
    if os.path.isdir(file):
        return f"{file!r} is a directory"
    if os.path.exists(file):
        return None if os.access(file, os.W_OK) else f"this process cannot write to {file!r}"
    # where open() creates it: a dangling link's target
    directory = os.path.dirname(os.path.realpath(file))
    if not os.path.isdir(directory):
        return f"cannot create {file!r}: its directory {directory!r} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create {file!r}: this process cannot write to {directory!r}"
    return None


def cannot_make_directory(directory: str) -> str | None:
    """
    :param directory: a directory the process will create if missing (with its parents) and
        write files in.
    :returns: why that would fail, or ``None``.
    """
    path = os.path.realpath(directory)
    if os.path.isdir(path):
        if os.access(path, os.W_OK | os.X_OK):
            return None
        return f"this process cannot write to {path!r}"
    if os.path.lexists(path):
        return f"{path!r} is not a directory"
    ancestor = os.path.dirname(path)
    while not os.path.lexists(ancestor):  # ends at "/", which exists
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return f"cannot create {path!r}: {ancestor!r} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create {path!r}: this process cannot write to {ancestor!r}"
    return None
