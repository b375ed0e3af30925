import json
import os
import threading

from csi_shim.state import DONE, PENDING, State, VolumeLocks, empty, reconcile, write_atomically

IMAGES = "/state/volumes"


def data(**parts):
    base = empty()
    base.update(parts)
    return base


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
    after, detach, remove, notes = reconcile(before, mounts, loops, IMAGES)
    assert set(after["volumes"]) == {"v1"} and remove == [f"{IMAGES}/v2.img", f"{IMAGES}/v2.img.tmp"]
    assert set(after["staged"]) == {"v1", "v4"} and after["staged"]["v4"]["status"] == PENDING
    assert set(after["published"]) == {"/k/t1", "/k/t2"} and after["published"]["/k/t2"]["status"] == PENDING
    assert detach == ["/dev/loop3"]  # not mounted anywhere; loop9 is not ours
    assert before["staged"]["v3"]  # pure: the input is untouched
    assert len(notes) == 6


def test_atomic_write_and_reload(tmp_path):
    path = tmp_path / "s" / "csi-state.json"
    state = State(str(path))
    with state.change():
        state.volumes["v"] = {"name": "n", "status": DONE}
    assert json.loads(path.read_text())["volumes"]["v"]["name"] == "n"
    assert State(str(path)).volume_by_name("n")[0] == "v"
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]


def test_change_rolls_back_on_error(tmp_path):
    state = State(str(tmp_path / "csi-state.json"))
    try:
        with state.change():
            state.staged["v"] = {}
            raise RuntimeError
    except RuntimeError:
        pass
    assert state.staged == {}


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
