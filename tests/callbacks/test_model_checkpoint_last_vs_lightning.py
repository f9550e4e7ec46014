"""ModelCheckpoint's ``last`` file against Lightning 2.6.6 in resumed runs: the same program under both."""

from __future__ import annotations

from pathlib import Path

from both_frameworks import FRAMEWORKS, resume


def test_resumed_run_that_saved_nothing_still_leaves_its_own_last(tmp_path: Path) -> None:
    # No trigger at all (every_n_epochs=0): only on_train_end writes last. The second run resumes from a file
    # written at the final batch end and trains no further step; Lightning still writes its own last then, a
    # -v1 sibling of the first run's last.ckpt (the resumed state names no last file). Regression: stepstone
    # skipped it because the restored step counted as already saved.
    observed = {}
    for name in FRAMEWORKS:
        observed[name] = resume(
            name,
            tmp_path / name,
            {"max_epochs": 1},
            {"max_epochs": 1},
            save_at=("batch", 0, 3),
            checkpoint={"every_n_epochs": 0, "save_last": True},
        )
    assert observed["stepstone"]["files"] == observed["lightning"]["files"]
    assert observed["lightning"]["files"][1] == ["last-v1.ckpt", "last.ckpt"]
