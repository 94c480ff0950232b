"""One atomic writer for every file root rewrites whole: records, cluster status and intent, keepalived's tracks.

A reader sees the old file or the new one; durability (fsync of the file and its folder) is the caller's choice;
a link planted at the file's name or at the temporary file's is replaced, never followed.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from deployer.errors import ClusterError, DiskFull, StateError
from deployer.folders import write_atomically


@pytest.fixture
def fsyncs(monkeypatch):
    """Which descriptors were fsynced: a plain file's or a folder's."""
    seen: list[str] = []
    real = os.fsync

    def counting(fd):
        seen.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return seen


@pytest.mark.parametrize(
    ("durable", "synced"),
    [
        (True, ["file", "folder"]),
        (False, []),
    ],
)
def test_durability_is_the_callers_choice(tmp_path, fsyncs, durable, synced):
    path = tmp_path / "records" / "demo.json"
    write_atomically(path, "{}\n", durable=durable)
    assert path.read_text() == "{}\n"
    assert fsyncs == synced
    assert os.listdir(path.parent) == ["demo.json"]


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_the_file_gets_the_callers_mode_whatever_the_umask(tmp_path, mode):
    path = tmp_path / "status.json"
    old = os.umask(0o077)
    try:
        write_atomically(path, "x\n", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode


def test_a_link_planted_at_the_name_is_replaced_not_followed(tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text("root's own\n")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "status.json").symlink_to(secret)
    write_atomically(folder / "status.json", "new\n")
    assert secret.read_text() == "root's own\n"
    assert not (folder / "status.json").is_symlink() and (folder / "status.json").read_text() == "new\n"


def test_a_link_in_place_of_the_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cluster").symlink_to(elsewhere)
    with pytest.raises(StateError) as caught:
        write_atomically(tmp_path / "cluster" / "intent", "leave\n")
    assert "is not a folder" in str(caught.value)
    assert os.listdir(elsewhere) == []


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "intent"
    write_atomically(path, "join\n")

    def refused(fd, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", refused)
    with pytest.raises(ClusterError) as caught:
        write_atomically(path, "leave\n", error=ClusterError)
    assert str(caught.value) == f"cannot write {path}: Input/output error"
    assert path.read_text() == "join\n" and os.listdir(tmp_path) == ["intent"]


@pytest.mark.parametrize("error", [StateError, ClusterError])
def test_a_full_file_system_is_disk_full_for_every_caller(tmp_path, monkeypatch, error):
    path = tmp_path / "tracks" / "health"

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(DiskFull):
        write_atomically(path, "0\n", durable=False, error=error)
    assert os.listdir(path.parent) == []
