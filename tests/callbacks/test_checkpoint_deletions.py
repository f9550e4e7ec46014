"""Which dropped files a committed trigger deletes now, and which stay owed to the next run."""

from __future__ import annotations

from pathlib import Path

from stepstone.callbacks.checkpoint_deletions import sort_deletions


def test_tracked_files_stay_the_resume_source_is_owed_and_repeats_count_once(tmp_path: Path) -> None:
    folder = str(tmp_path / "ckpts")
    a, b, c = (f"{folder}/{name}.ckpt" for name in "abc")
    delete, owed = sort_deletions([a, b, b, c], tracked={c}, resumed_from=b, dirpath=folder)
    assert (delete, owed) == ([a], [b])


def test_local_files_outside_the_folder_are_never_deleted(tmp_path: Path) -> None:
    inside, outside = str(tmp_path / "ckpts" / "a.ckpt"), str(tmp_path / "elsewhere" / "b.ckpt")
    delete, owed = sort_deletions(
        [inside, outside], tracked=set(), resumed_from=None, dirpath=str(tmp_path / "ckpts")
    )
    assert (delete, owed) == ([inside], [])
    remote = "memory://bucket/ckpts/c.ckpt"
    assert sort_deletions([remote], set(), None, "memory://bucket/ckpts") == ([remote], [])
