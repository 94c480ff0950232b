"""The per-app record: round trip, promotion, atomic writes, and unreadable files."""

import errno
import json
import os

import pytest

from deployer.errors import DiskFull, StateError
from deployer.folders import write_atomically
from deployer.host.state import StateStore
from deployer.plan.records import AppState, Instance
from support.instances import demo_instance

BLUE_V1 = demo_instance("blue", "v1", 1, digest="sha256:" + "11" * 32)
GREEN_V2 = demo_instance("green", "v2", 2)
BLUE_V3 = demo_instance("blue", "v3", 3, digest="sha256:" + "33" * 32)


def test_missing_file_gives_an_empty_state(tmp_path):
    assert StateStore(tmp_path).load("demo") == AppState(app="demo")


def test_round_trip(tmp_path):
    store = StateStore(tmp_path)
    state = AppState(
        app="demo",
        active=GREEN_V2,
        previous=BLUE_V1,
        updated_at="2026-11-21T10:00:01.000Z",
        mode="maintenance",
        mode_detail={"message": "back soon"},
    )
    store.save(state)
    assert store.load("demo") == state
    assert store.path("demo") == tmp_path / "apps" / "demo.json"
    saved = json.loads(store.path("demo").read_text())
    assert saved["schema"] == 1
    assert saved["active"]["container_id"] == "c2" * 32
    assert saved["previous"]["digest"] == "sha256:" + "11" * 32


def test_apps_are_stored_apart(tmp_path):
    store = StateStore(tmp_path)
    store.save(AppState(app="demo", active=BLUE_V1))
    store.save(AppState(app="api"))
    assert store.load("demo").active == BLUE_V1
    assert store.load("api") == AppState(app="api")
    assert sorted(os.listdir(tmp_path / "apps")) == ["api.json", "demo.json"]


def test_promoted_moves_the_old_active_to_previous():
    first = AppState(app="demo").promoted(BLUE_V1, "t1")
    assert first == AppState(app="demo", active=BLUE_V1, previous=None, updated_at="t1")
    second = first.promoted(GREEN_V2, "t2")
    assert second == AppState(app="demo", active=GREEN_V2, previous=BLUE_V1, updated_at="t2")
    third = second.promoted(BLUE_V3, "t3")
    assert third == AppState(app="demo", active=BLUE_V3, previous=GREEN_V2, updated_at="t3")


def test_promoting_the_same_container_again_keeps_previous():
    state = AppState(app="demo", active=GREEN_V2, previous=BLUE_V1, updated_at="t2")
    moved = Instance(**{**GREEN_V2.__dict__, "address": "172.18.0.9", "since": "later"})
    again = state.promoted(moved, "t3")
    assert again == AppState(app="demo", active=moved, previous=BLUE_V1, updated_at="t3")


def test_promoted_keeps_the_mode_and_does_not_change_the_original():
    state = AppState(app="demo", active=BLUE_V1, mode="maintenance", mode_detail={"message": "back soon"})
    promoted = state.promoted(GREEN_V2, "t")
    assert (promoted.mode, promoted.mode_detail) == ("maintenance", {"message": "back soon"})
    assert state.active == BLUE_V1 and state.previous is None


def test_save_leaves_no_temporary_files(tmp_path):
    store = StateStore(tmp_path)
    for i, instance in enumerate([BLUE_V1, GREEN_V2, BLUE_V3]):
        store.save(AppState(app="demo", active=instance, updated_at=str(i)))
    assert os.listdir(tmp_path / "apps") == ["demo.json"]
    assert store.load("demo").active == BLUE_V3


def test_a_failed_write_keeps_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "apps" / "demo.json"
    write_atomically(path, '{"old": true}\n')
    with pytest.raises(UnicodeEncodeError):
        write_atomically(path, "half written \udcff")  # cannot be encoded: fails after the temp file exists
    assert path.read_text() == '{"old": true}\n'
    assert os.listdir(path.parent) == ["demo.json"]


def test_an_unwritable_folder_raises_state_error(tmp_path):
    blocker = tmp_path / "apps"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StateError) as caught:
        StateStore(tmp_path).save(AppState(app="demo"))
    assert str(caught.value).startswith(f"cannot write {blocker / 'demo.json'}: ")


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ('{"app": "demo", "active": {', "Expecting property name enclosed in double quotes"),
        ("", "Expecting value: line 1 column 1 (char 0)"),
        (b"\xff\xfe\x00garbage", "codec can't decode"),
    ],
)
def test_a_corrupt_file_raises_state_error(tmp_path, content, detail):
    store = StateStore(tmp_path)
    store.path("demo").parent.mkdir(parents=True)
    if isinstance(content, bytes):
        store.path("demo").write_bytes(content)
    else:
        store.path("demo").write_text(content)
    with pytest.raises(StateError) as caught:
        store.load("demo")
    message = str(caught.value)
    assert message.startswith(f"cannot read the state of app 'demo' from {store.path('demo')}: ")
    assert detail in message
    assert caught.value.context == {"app": "demo"}


@pytest.mark.parametrize(
    "content",
    [
        '{"active": null}',
        '["demo"]',
        '"demo"',
        '{"app": "demo", "active": {"port_set": "blue"}}',
        '{"app": "demo", "active": {"colour": "blue"}}',
    ],
)
def test_valid_json_that_is_not_a_state_raises_state_error(tmp_path, content):
    store = StateStore(tmp_path)
    store.path("demo").parent.mkdir(parents=True)
    store.path("demo").write_text(content)
    with pytest.raises(StateError) as caught:
        store.load("demo")
    assert str(caught.value).startswith(f"the state file {store.path('demo')} is not a deployer state: ")


def test_a_failed_rename_raises_state_error_and_cleans_up(tmp_path):
    path = tmp_path / "apps" / "demo.json"
    path.mkdir(parents=True)  # a folder in the way of the rename
    with pytest.raises(StateError) as caught:
        write_atomically(path, "{}\n")
    assert str(caught.value) == f"cannot write {path}: Is a directory"
    assert os.listdir(path.parent) == ["demo.json"]


def test_a_full_file_system_is_disk_full_a_fault_that_waiting_clears(tmp_path, monkeypatch):
    path = tmp_path / "apps" / "demo.json"
    write_atomically(path, '{"old": true}\n')

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFull) as caught:
        write_atomically(path, '{"new": true}\n')
    assert (str(caught.value), caught.value.transient) == (f"cannot write {path}: No space left on device", True)
    assert path.read_text() == '{"old": true}\n' and os.listdir(path.parent) == ["demo.json"]
