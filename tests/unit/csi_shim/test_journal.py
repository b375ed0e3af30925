"""The state store: snapshot plus journal, replay, rollback, compaction, intent, and loads that refuse."""

import json
import os
import threading

import pytest

from agent.errors import StateInvalid
from csi_shim import journal as journal_module
from csi_shim.journal import State, empty, write_atomically
from csi_shim.locks import VolumeLocks
from csi_shim.records import DONE, PENDING, ImageVolume, RecordInvalid


def volume(name="pvc", status=DONE, volume_id="v"):
    return {"name": name, "capacity_bytes": 1 << 24, "fs_type": "ext4", "image": f"/s/volumes/{volume_id}.img",
            "status": status}


def staged(path="/k/s1", status=DONE):
    return {"staging_path": path, "label": None, "mount_flags": [], "fs_type": "ext4",
            "device": "/dev/loop1" if status == DONE else None, "status": status,
            "verification": "no-context" if status == DONE else None}


def published(volume_id="v", status=DONE):
    return {"volume_id": volume_id, "staging_path": "/k/s1", "label": None, "readonly": False, "mount_flags": [],
            "pod": ["ns", "pod"], "status": status, "verification": None, "action": None}


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


# ---- journal, replay, rollback, compaction ------------------------------------------------------------------

def test_first_change_writes_a_snapshot_and_reloads(tmp_path):
    path = tmp_path / "s" / "csi-state.json"
    state = State(str(path))
    assert state.fresh
    with state.change():
        state.volumes["v"] = volume("n")
    assert json.loads(path.read_text())["volumes"]["v"]["name"] == "n"
    reloaded = State(str(path))
    assert reloaded.volume_by_name("n")[0] == "v" and not reloaded.fresh
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]


def test_later_changes_go_to_the_journal_and_replay_on_load(tmp_path):
    path, state = fresh(tmp_path)
    snapshot = path.read_text()
    with state.change():
        state.staged["v1"] = staged(status=PENDING)
    with state.change():
        state.staged["v1"] = staged()
        state.published["/k/t1"] = published("v1")
    with state.change():
        state.published.pop("/k/t1")
    assert path.read_text() == snapshot  # nothing rewritten
    [journal] = journals(tmp_path)
    assert len((tmp_path / journal).read_text().splitlines()) == 4
    assert State(str(path)).plain() == data(staged={"v1": staged()})


def test_a_valid_file_loads_and_saves_byte_for_byte(tmp_path):
    """Files written by earlier releases of format 1 load unchanged: a commit of what was loaded writes the
    same snapshot bytes (journal name aside)."""
    path, state = fresh(tmp_path, volumes={"v": volume()}, staged={"v": staged()},
                       published={"/k/t1": published()})
    before = json.loads(path.read_text())
    state.close()
    again = State(str(path))
    again.commit()
    after = json.loads(path.read_text())
    assert {k: v for k, v in after.items() if k != "journal"} == {k: v for k, v in before.items() if k != "journal"}


def test_a_repeat_that_changes_nothing_writes_nothing(tmp_path):
    _, state = fresh(tmp_path, staged={"v": staged()})
    [journal] = journals(tmp_path)
    with state.change():
        state.staged["v"] = staged()
    assert (tmp_path / journal).read_text() == ""


def test_change_rolls_back_on_error(tmp_path):
    path, state = fresh(tmp_path, staged={"keep": staged()})
    with pytest.raises(RuntimeError):
        with state.change():
            state.staged["v"] = staged("/k/s2")
            state.staged["keep"] = staged(status=PENDING)
            state.staged.pop("keep")
            raise RuntimeError
    assert state.staged == {"keep": staged()}
    assert State(str(path)).plain()["staged"] == {"keep": staged()}


def test_tables_refuse_changes_outside_change_bulk_edits_and_wrong_shapes(tmp_path):
    state = State(str(tmp_path / "csi-state.json"))
    with pytest.raises(RuntimeError, match="outside"):
        state.staged["v"] = staged()
    with state.change():
        with pytest.raises(TypeError):
            state.staged.update(v=staged())
        with pytest.raises(RecordInvalid, match=r"published\['/t'\]\.volume_id: is missing"):
            state.published["/t"] = {k: v for k, v in published().items() if k != "volume_id"}
    assert state.staged == {} and state.published == {}


def test_a_torn_last_line_is_dropped(tmp_path):
    path, state = fresh(tmp_path)
    with state.change():
        state.staged["a"] = staged()
    [journal] = journals(tmp_path)
    with open(tmp_path / journal, "a") as handle:
        handle.write('{"t":"staged","k":"b","r":{"sta')  # power cut in the middle of a write
    assert set(State(str(path)).plain()["staged"]) == {"a"}


def test_a_complete_last_line_without_its_newline_is_applied(tmp_path):
    path, state = fresh(tmp_path)
    [journal] = journals(tmp_path)
    line = json.dumps({"t": "staged", "k": "b", "r": staged()})
    (tmp_path / journal).write_text(line)
    assert set(State(str(path)).plain()["staged"]) == {"b"}


def test_the_journal_is_compacted_into_a_new_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_SLACK", 10)
    path, state = fresh(tmp_path)
    for index in range(40):
        with state.change():
            state.published[f"/k/t{index}"] = published()
        with state.change():
            state.published.pop(f"/k/t{index}")
    [journal] = journals(tmp_path)
    assert len((tmp_path / journal).read_text().splitlines()) <= 10
    assert State(str(path)).plain() == empty()


def test_a_journal_not_named_by_the_snapshot_is_ignored(tmp_path):
    """A crash between writing a new snapshot and removing the old journal must not replay the old one."""
    path, state = fresh(tmp_path)
    with state.change():
        state.staged["gone"] = staged()
    [old] = journals(tmp_path)
    kept = (tmp_path / old).read_text()
    state.replace(empty())
    (tmp_path / old).write_text(kept)
    assert State(str(path)).plain() == empty()


def test_write_atomically_never_leaves_half_a_file(tmp_path):
    path = str(tmp_path / "f.json")
    write_atomically(path, {"a": 1})
    write_atomically(path, {"a": 2})
    assert json.load(open(path)) == {"a": 2}


# ---- intent ---------------------------------------------------------------------------------------------------

def test_intent_writes_pending_then_done_with_the_results(tmp_path):
    path, state = fresh(tmp_path)
    seen = []
    with state.intent("staged", "v", staged(status=PENDING)) as result:
        seen.append(State(str(path)).plain()["staged"]["v"]["status"])  # on disk before the step acts
        result.update(device="/dev/loop1", verification="no-context")
    assert seen == [PENDING]
    assert state.staged["v"] == staged()
    assert State(str(path)).plain()["staged"]["v"] == staged()


def test_intent_takes_typed_records(tmp_path):
    _, state = fresh(tmp_path)
    with state.intent("volumes", "v", ImageVolume(**volume(status=PENDING))):
        assert state.volumes["v"]["status"] == PENDING
    assert state.volumes["v"] == volume()


def test_intent_removes_the_record_when_the_step_fails(tmp_path):
    path, state = fresh(tmp_path)
    with pytest.raises(OSError):
        with state.intent("published", "/k/t", published(status=PENDING)):
            raise OSError("mount failed")
    assert "/k/t" not in state.published
    assert State(str(path)).plain() == empty()


def test_intent_refuses_a_done_record_of_the_wrong_shape(tmp_path):
    _, state = fresh(tmp_path)
    with pytest.raises(RecordInvalid, match="device"):
        with state.intent("staged", "v", staged(status=PENDING)) as result:
            result.update(device=7)
    assert state.staged["v"]["status"] == PENDING  # left for reconcile, as a kill at this point would


# ---- loads that refuse: the file named, left as it is ---------------------------------------------------------

def saved(tmp_path):
    path, state = fresh(tmp_path, volumes={"v": volume()}, staged={"v": staged()},
                        published={"/k/t1": published()})
    with state.change():
        state.published["/k/t2"] = published()
    state.close()
    [journal] = journals(tmp_path)
    return path, tmp_path / journal


def edit(path, change):
    snapshot = json.loads(path.read_text())
    path.write_text(json.dumps(change(snapshot)))


def set_key(key, value):
    def change(snapshot):
        snapshot[key] = value
        return snapshot
    return change


def in_record(table, field, value):
    def change(snapshot):
        record = next(iter(snapshot[table].values()))
        if value is KeyError:
            del record[field]
        else:
            record[field] = value
        return snapshot
    return change


DAMAGE = {
    "truncated": (lambda s, j: s.write_bytes(s.read_bytes()[:40]), "snapshot", "not valid JSON"),
    "garbage": (lambda s, j: s.write_bytes(b"\xc1\x00\xff garbage"), "snapshot", "not UTF-8"),
    "empty": (lambda s, j: s.write_bytes(b""), "snapshot", "not valid JSON"),
    "directory": (lambda s, j: (s.unlink(), s.mkdir()), "snapshot", "is a directory"),
    "fifo": (lambda s, j: (s.unlink(), os.mkfifo(s)), "snapshot", "named pipe"),
    "symlink": (lambda s, j: (s.rename(s.with_suffix(".x")), s.symlink_to(s.with_suffix(".x"))), "snapshot",
                "symbolic link"),
    "version-2": (lambda s, j: edit(s, set_key("version", 2)), "snapshot", "version 2"),
    "version-string": (lambda s, j: edit(s, set_key("version", "1")), "snapshot", 'version "1"'),
    "version-true": (lambda s, j: edit(s, set_key("version", True)), "snapshot", "version true"),
    "array": (lambda s, j: edit(s, lambda d: [d]), "snapshot", "an array"),
    "volumes-list": (lambda s, j: edit(s, set_key("volumes", [])), "snapshot", "'volumes' is an array"),
    "unknown-key": (lambda s, j: edit(s, set_key("owner", "x")), "snapshot", "unknown top-level"),
    "without-volume-id": (lambda s, j: edit(s, in_record("published", "volume_id", KeyError)), "snapshot",
                          "volume_id: is missing"),
    "wrong-type": (lambda s, j: edit(s, in_record("volumes", "capacity_bytes", "1")), "snapshot",
                   "capacity_bytes: is a string"),
    "journal-slash": (lambda s, j: edit(s, set_key("journal", "../csi-state.1.journal")), "snapshot",
                      "not a file name"),
    "journal-missing": (lambda s, j: j.unlink(), "journal", "is missing"),
    "journal-directory": (lambda s, j: (j.unlink(), j.mkdir()), "journal", "is a directory"),
    "journal-middle-line": (lambda s, j: j.write_bytes(b"{bad\n" + j.read_bytes()), "journal", "line 1"),
    "journal-complete-bad-last-line": (lambda s, j: j.write_bytes(j.read_bytes() + b"{bad}\n"), "journal",
                                       "line 2"),
    "journal-wrong-record": (lambda s, j: j.write_bytes(j.read_bytes() + json.dumps(
        {"t": "published", "k": "/k/t3", "r": {"volume_id": "v"}}).encode() + b"\n"), "journal", "line 2"),
    "journal-unknown-table": (lambda s, j: j.write_bytes(j.read_bytes() + b'{"t":"x","k":"k","r":null}\n'),
                              "journal", "names the table"),
    "snapshot-deleted": (lambda s, j: s.unlink(), "snapshot", "journal"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_state_is_refused_and_left_as_it_is(tmp_path, case):
    damage, named, why = DAMAGE[case]
    snapshot, journal = saved(tmp_path)
    damage(snapshot, journal)
    before = {p: (os.path.islink(tmp_path / p), (tmp_path / p).is_file() and (tmp_path / p).read_bytes())
              for p in sorted(os.listdir(tmp_path))}
    with pytest.raises(StateInvalid) as caught:
        State(str(snapshot))
    assert caught.value.path == str(snapshot if named == "snapshot" else journal)
    assert why in caught.value.why
    message = str(caught.value)
    assert "\n" not in message and "--recover-state" in message and caught.value.path in message
    after = {p: (os.path.islink(tmp_path / p), (tmp_path / p).is_file() and (tmp_path / p).read_bytes())
             for p in sorted(os.listdir(tmp_path))}
    assert after == before


def test_a_state_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(StateInvalid, match="state directory"):
        State(str(tmp_path / "state" / "csi-state.json"))


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
