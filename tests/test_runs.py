"""RunFolder used from the library, without the CLI: checked, locked and marked while the run goes on; released after.

The command line's refusals of --out are the fault cases' (test_fault_cases*.py); these are the library's own use."""

import os
from pathlib import Path

import pytest
from helpers import run_holding_the_lock

from cpsample.provenance import RUN_BOOKKEEPING
from cpsample.runs import RunFolder, made_by_cpsample, release_locks

LOCK_FILE, OUT_MARKER, LOCK_HOLDER = RUN_BOOKKEEPING


def test_a_run_folder_is_locked_while_in_use_and_kept_with_its_marker(tmp_path):
    with RunFolder(tmp_path / "run", "sample") as out:
        assert (out / LOCK_FILE).exists() and (out / OUT_MARKER).exists() and (out / LOCK_HOLDER).exists()
        (out / "grid.png").write_bytes(b"")
    assert not (out / LOCK_FILE).exists() and not (out / LOCK_HOLDER).exists(), "released at the end of the run"
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


def test_a_folder_locked_by_another_process_is_refused_until_that_process_is_killed(tmp_path):
    out = tmp_path / "run"
    with run_holding_the_lock(out, "evaluate") as runner:
        with pytest.raises(
            FileExistsError, match=rf"in use by another run \(`cpsample evaluate`, pid {runner.pid} on "
        ):
            RunFolder(out, "evaluate").prepare()
        assert (out / LOCK_FILE).exists(), "the refused run leaves the holder's lock alone"
        runner.kill()  # SIGKILL: the holder releases nothing itself, the kernel drops its lock
        runner.wait()
    assert made_by_cpsample(out), "a killed run's lock file still says the folder is cpsample's"
    with RunFolder(out, "evaluate"):
        assert str(os.getpid()) in (out / LOCK_HOLDER).read_text(), "taken over: the holder is this process now"
    assert not (out / LOCK_FILE).exists()


def test_a_lock_this_process_left_over_is_taken_over(tmp_path):
    """One command at a time per process: a lock it still holds on the folder is left over from an earlier one."""
    RunFolder(tmp_path / "run", "sample").prepare()
    with RunFolder(tmp_path / "run", "sample") as out:
        assert (out / LOCK_FILE).exists()
    assert not (out / LOCK_FILE).exists()
