"""``config.paths``: where the process will write, checked without writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yatagarasu.config.paths import cannot_append, cannot_make_directory


def test_a_file_can_be_appended_to_where_its_directory_is(tmp_path: Path) -> None:
    assert cannot_append(str(tmp_path / "new.log")) is None
    existing = tmp_path / "old.log"
    existing.write_text("x")
    assert cannot_append(str(existing)) is None
    assert not (tmp_path / "new.log").exists()  # nothing is created


def test_a_file_cannot_be_appended_to_without_its_directory_or_as_a_directory(
    tmp_path: Path,
) -> None:
    assert "does not exist" in (cannot_append(str(tmp_path / "gone" / "x.log")) or "")
    assert "is a directory" in (cannot_append(str(tmp_path)) or "")
    assert cannot_append(" ") == "' ' is not a file path"
    assert cannot_append(f"{tmp_path}/gone/") == f"'{tmp_path}/gone/' is not a file path"
    link = tmp_path / "link.log"
    link.symlink_to(tmp_path / "gone" / "target.log")  # dangling: open() creates the target
    assert "its directory" in (cannot_append(str(link)) or "")


def test_a_directory_is_made_below_the_nearest_one_that_exists(tmp_path: Path) -> None:
    assert cannot_make_directory(str(tmp_path)) is None
    assert cannot_make_directory(str(tmp_path / "a" / "b" / "c")) is None
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cannot_make_directory(str(blocker)) == f"{str(blocker)!r} is not a directory"
    below = cannot_make_directory(str(blocker / "cache"))
    assert below == f"cannot create {str(blocker / 'cache')!r}: {str(blocker)!r} is not a directory"


def test_permissions_the_process_lacks_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user who may not write
    (tmp_path / "old.log").write_text("x")
    assert cannot_append(str(tmp_path / "old.log")) == (
        f"this process cannot write to {str(tmp_path / 'old.log')!r}"
    )
    assert "cannot write to" in (cannot_append(str(tmp_path / "new.log")) or "")
    assert cannot_make_directory(str(tmp_path)) == f"this process cannot write to {str(tmp_path)!r}"
    assert cannot_make_directory(str(tmp_path / "new")) == (
        f"cannot create {str(tmp_path / 'new')!r}: this process cannot write to {str(tmp_path)!r}"
    )
