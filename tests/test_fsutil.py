"""Atomic writes (names, permissions), the sweep of stale temporaries, and the folder lock."""

import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import hold_lock
from imdbsent import fsutil
from imdbsent.errors import UserError


@pytest.fixture
def umask():
    """Set a umask for the test; the previous one comes back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o027, 0o002], ids=oct)
def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == expected
    fsutil.atomic_write_text(tmp_path / "config.toml", "version = 1\n")
    assert _mode(tmp_path / "config.toml") == expected
    # safetensors writes a file of its own (mode 0600) in place of the temporary
    tensors = {"w": torch.arange(3.0)}
    fsutil.atomic_write(tmp_path / "best.safetensors",
                        lambda tmp: save_file(tensors, str(tmp)))
    assert _mode(tmp_path / "best.safetensors") == expected
    torch.testing.assert_close(load_file(tmp_path / "best.safetensors")["w"], tensors["w"])
    with fsutil.FolderLock(tmp_path, "train"):  # a group-shared folder's lock: group-writable
        assert _mode(tmp_path / fsutil.LOCK_NAME) == expected


def test_atomic_write_names_its_temporary_distinctively_and_leaves_none(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("whole")

    fsutil.atomic_write(tmp_path / "metrics.jsonl", write)
    assert seen[0].parent == tmp_path and fsutil.is_temporary(seen[0].name)
    assert seen[0].name.startswith(".metrics.jsonl.imdbsent-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "a.txt").write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="cannot write .*a.txt: No space left"):
        fsutil.atomic_write(tmp_path / "a.txt", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_sweep_removes_only_imdbsent_temporaries(tmp_path):
    ours = tmp_path / fsutil.temporary_name("best.safetensors")
    others = [".foo.tmp", ".best.safetensors.abc123xy.tmp", "notes.tmp", ".x.imdbsent-zz.tmp",
              "best.safetensors"]
    for name in [ours.name, *others]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    nested = tmp_path / "sub" / fsutil.temporary_name("a")
    nested.write_text("x")
    assert fsutil.sweep_temporaries(tmp_path) == [ours]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(others)
    assert nested.exists()  # subfolders are another lock's business


def test_lock_records_its_pid_refuses_a_second_holder_and_sweeps(tmp_path):
    stale = tmp_path / fsutil.temporary_name("train.parquet")
    stale.write_text("left by a killed writer")
    (tmp_path / ".foo.tmp").write_text("another program's")
    with fsutil.FolderLock(tmp_path, "prepare"):
        assert not stale.exists() and (tmp_path / ".foo.tmp").exists()
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=rf"^{tmp_path} is in use by another imdbsent "
                           rf"prepare process \(pid {os.getpid()}\); wait for it to finish$"):
            with fsutil.FolderLock(tmp_path, "prepare"):
                pass
        with pytest.raises(UserError, match="train process .*; use another --run-dir"):
            fsutil.FolderLock(tmp_path, "train", advice="use another --run-dir").__enter__()
        assert not fsutil.is_locked(tmp_path)  # held by this process, not another
    with fsutil.FolderLock(tmp_path, "prepare"):  # released: can be taken again
        pass


def test_lock_of_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot lock .*nowhere"):
        fsutil.FolderLock(tmp_path / "nowhere", "prepare").__enter__()


def test_is_locked_sees_another_process_and_the_kernel_frees_a_killed_holder(tmp_path):
    assert not fsutil.is_locked(tmp_path)  # no lock file at all
    proc = hold_lock(tmp_path, "train")
    try:
        assert fsutil.is_locked(tmp_path)
        with pytest.raises(UserError, match=rf"imdbsent train process \(pid {proc.pid}\)"):
            fsutil.FolderLock(tmp_path, "train").__enter__()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert not fsutil.is_locked(tmp_path)
    with fsutil.FolderLock(tmp_path, "train"):
        pass
