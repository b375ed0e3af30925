import json
import os
import threading

import pytest

from csi_shim import state as state_module
from csi_shim.state import DONE, PENDING, State, VolumeLocks, empty, reconcile, write_atomically

IMAGES = "/state/volumes"


def data(**parts):
    base = empty()
    base.update(parts)
    return base


def fresh(tmp_path, **tables):
    """A state saved with these records, as the shim leaves it after its start-up."""
    path = tmp_path / "csi-state.json"
    state = State(str(path))
    state.replace(data(**tables))
    return path, state


def journals(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".journal"))


def test_reconcile_after_a_crash():
    before = data(
        volumes={"v1": {"image": f"{IMAGES}/v1.img", "status": DONE},
                 "v2": {"image": f"{IMAGES}/v2.img", "status": PENDING}},
        staged={"v1": {"staging_path": "/k/s1", "status": DONE},
                "v3": {"staging_path": "/k/s3", "status": PENDING},
                "v4": {"staging_path": "/k/s4", "status": PENDING}},
        published={"/k/t1": {"volume_id": "v1", "status": DONE},
                   "/k/t2": {"volume_id": "v1", "status": PENDING},
                   "/k/t3": {"volume_id": "v1", "status": DONE}})
    mounts = {"/k/s1": "7:1", "/k/t1": "7:1", "/k/t2": "7:1", "/k/s4": "7:4"}
    loops = {"/dev/loop1": (f"{IMAGES}/v1.img", "7:1"), "/dev/loop3": (f"{IMAGES}/v3.img", "7:3"),
             "/dev/loop4": (f"{IMAGES}/v4.img", "7:4"), "/dev/loop9": ("/elsewhere.img", "7:9")}
    after, detach, remove, rmdirs, notes = reconcile(before, mounts, loops, IMAGES)
    assert set(after["volumes"]) == {"v1"} and remove == [f"{IMAGES}/v2.img", f"{IMAGES}/v2.img.tmp"]
    assert set(after["staged"]) == {"v1", "v4"} and after["staged"]["v4"]["status"] == PENDING
    assert set(after["published"]) == {"/k/t1", "/k/t2"} and after["published"]["/k/t2"]["status"] == PENDING
    assert detach == ["/dev/loop3"]  # not mounted anywhere; loop9 is not ours
    assert before["staged"]["v3"]  # pure: the input is untouched
    assert rmdirs == []  # /k/t3 was published, kubelet's unpublish cleans it
    assert len(notes) == 6


def test_reconcile_keeps_given_devices():
    """A given block device (pre-provisioned volume) is never removed or detached, even when it is a loop
    device, and its volume stays known after its mounts are gone (kubelet still unpublishes and unstages)."""
    before = data(
        volumes={"pv-1": {"device": "/dev/loop5", "device_number": "7:5", "fs_type": "ext4", "status": DONE},
                 "pv-2": {"device": "/dev/sdb", "device_number": "8:16", "fs_type": "ext4", "status": PENDING}},
        staged={"pv-1": {"staging_path": "/k/s1", "device": "/dev/loop5", "status": DONE},
                "pv-2": {"staging_path": "/k/s2", "device": "/dev/sdb", "status": DONE}},
        published={"/k/t1": {"volume_id": "pv-1", "status": DONE}})
    loops = {"/dev/loop5": ("/srv/disks/disk.img", "7:5"), "/dev/loop6": ("/srv/disks/other.img", "7:6")}
    after, detach, remove, rmdirs, notes = reconcile(before, {"/k/s1": "7:5", "/k/t1": "7:5"}, loops, IMAGES)
    assert after["volumes"] == before["volumes"] and remove == [] and detach == []
    assert set(after["staged"]) == {"pv-1"} and set(after["published"]) == {"/k/t1"}


def test_reconcile_removes_the_directory_of_a_publish_that_never_mounted():
    before = data(published={"/k/t1": {"volume_id": "v1", "status": PENDING}})
    after, _, _, rmdirs, notes = reconcile(before, {}, {}, IMAGES)
    assert after["published"] == {} and rmdirs == ["/k/t1"] and "never mounted" in notes[0]


def test_first_change_writes_a_snapshot_and_reloads(tmp_path):
    path = tmp_path / "s" / "csi-state.json"
    state = State(str(path))
    with state.change():
        state.volumes["v"] = {"name": "n", "status": DONE}
    assert json.loads(path.read_text())["volumes"]["v"]["name"] == "n"
    assert State(str(path)).volume_by_name("n")[0] == "v"
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]


def test_later_changes_go_to_the_journal_and_replay_on_load(tmp_path):
    path, state = fresh(tmp_path)
    snapshot = path.read_text()
    with state.change():
        state.staged["v1"] = {"staging_path": "/k/s1", "status": PENDING}
    with state.change():
        state.staged["v1"] = dict(state.staged["v1"], status=DONE)
        state.published["/k/t1"] = {"volume_id": "v1", "status": DONE}
    with state.change():
        state.published.pop("/k/t1")
    assert path.read_text() == snapshot  # nothing rewritten
    [journal] = journals(tmp_path)
    assert len((tmp_path / journal).read_text().splitlines()) == 4
    reloaded = State(str(path))
    assert reloaded.plain() == data(staged={"v1": {"staging_path": "/k/s1", "status": DONE}})


def test_a_repeat_that_changes_nothing_writes_nothing(tmp_path):
    _, state = fresh(tmp_path, staged={"v": {"status": DONE}})
    [journal] = journals(tmp_path)
    with state.change():
        state.staged["v"] = {"status": DONE}
    assert (tmp_path / journal).read_text() == ""


def test_change_rolls_back_on_error(tmp_path):
    path, state = fresh(tmp_path, staged={"keep": {"status": DONE}})
    with pytest.raises(RuntimeError):
        with state.change():
            state.staged["v"] = {}
            state.staged["keep"] = {"status": PENDING}
            state.staged.pop("keep")
            raise RuntimeError
    assert state.staged == {"keep": {"status": DONE}}
    assert State(str(path)).plain()["staged"] == {"keep": {"status": DONE}}


def test_tables_refuse_changes_outside_change_and_bulk_edits(tmp_path):
    state = State(str(tmp_path / "csi-state.json"))
    with pytest.raises(RuntimeError, match="outside"):
        state.staged["v"] = {}
    with state.change():
        with pytest.raises(TypeError):
            state.staged.update(v={})
    assert state.staged == {}


def test_a_torn_last_line_is_dropped(tmp_path):
    path, state = fresh(tmp_path)
    with state.change():
        state.staged["a"] = {"status": DONE}
    [journal] = journals(tmp_path)
    with open(tmp_path / journal, "a") as handle:
        handle.write('{"t":"staged","k":"b","r":{"sta')  # power cut in the middle of a write
    assert set(State(str(path)).plain()["staged"]) == {"a"}


def test_the_journal_is_compacted_into_a_new_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "COMPACT_SLACK", 10)
    path, state = fresh(tmp_path)
    for index in range(40):
        with state.change():
            state.published[f"/k/t{index}"] = {"volume_id": "v", "status": DONE}
        with state.change():
            state.published.pop(f"/k/t{index}")
    [journal] = journals(tmp_path)
    assert len((tmp_path / journal).read_text().splitlines()) <= 10
    assert State(str(path)).plain() == empty()


def test_a_journal_not_named_by_the_snapshot_is_ignored(tmp_path):
    """A crash between writing a new snapshot and removing the old journal must not replay the old one."""
    path, state = fresh(tmp_path)
    with state.change():
        state.staged["gone"] = {"status": DONE}
    [old] = journals(tmp_path)
    kept = (tmp_path / old).read_text()
    state.replace(empty())
    (tmp_path / old).write_text(kept)
    assert State(str(path)).plain() == empty()


def test_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "csi-state.json"
    path.write_text("{not json")
    assert State(str(path)).data == empty()
    assert [p for p in os.listdir(tmp_path) if ".corrupt." in p]


def test_write_atomically_never_leaves_half_a_file(tmp_path):
    path = str(tmp_path / "f.json")
    write_atomically(path, {"a": 1})
    write_atomically(path, {"a": 2})
    assert json.load(open(path)) == {"a": 2}


def test_volume_locks_serialise_one_key():
    locks, order, barrier = VolumeLocks(), [], threading.Barrier(2)

    def worker(tag):
        barrier.wait()
        with locks.hold("v"):
            order.append(tag)
            order.append(tag)

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (list("aabb"), list("bbaa")) and not locks._locks
