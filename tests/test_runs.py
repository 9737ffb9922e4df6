"""RunFolder used from the library, without the CLI: checked, locked and marked while the run goes on; released after.

The command line's refusals of --out are the fault cases' (test_fault_cases*.py); these are the library's own use."""

from pathlib import Path

import pytest

from cpsample.provenance import RUN_BOOKKEEPING
from cpsample.runs import RunFolder, release_locks

LOCK_FILE, OUT_MARKER = RUN_BOOKKEEPING


def test_a_run_folder_is_locked_while_in_use_and_kept_with_its_marker(tmp_path):
    with RunFolder(tmp_path / "run", "sample") as out:
        assert (out / LOCK_FILE).exists() and (out / OUT_MARKER).exists()
        (out / "grid.png").write_bytes(b"")
    assert not (out / LOCK_FILE).exists(), "released at the end of the run"
    assert (out / OUT_MARKER).exists() and (out / "grid.png").exists()


def test_a_folder_the_run_created_and_left_empty_goes_with_the_lock(tmp_path):
    folder = RunFolder(tmp_path / "run", "sample")
    folder.prepare()
    folder.release()
    folder.release()  # again: nothing to do
    assert not (tmp_path / "run").exists()


def test_release_locks_drops_every_lock_this_process_took(tmp_path):
    for name in ("a", "b"):
        RunFolder(tmp_path / name, "evaluate").prepare()
    release_locks()
    assert not any(tmp_path.iterdir())


def test_a_refused_folder_is_never_locked(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds notes.txt; pass --overwrite to replace it"):
        RunFolder(tmp_path / "run", "sample").prepare()
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_a_run_folder_that_fails_after_taking_the_lock_is_not_left_locked(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "touch", full_disk)  # the marker cannot be written
    with pytest.raises(OSError, match="No space left"):
        with RunFolder(tmp_path / "run", "sample"):
            pass
    assert not (tmp_path / "run").exists()
