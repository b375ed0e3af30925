"""A damaged state file never makes the shim forget volumes: it refuses to start, and --recover-state rebuilds.

Each case stages and publishes a real volume with the real shim (`selinux-mount-agent csi` in a subprocess),
stops it, damages the state in one way, and starts it again. The shim must exit 2 with one line naming the
damaged file, leave that file as it was and every mount in place. `csi --recover-state` then sets the bad files
aside, rebuilds the records from the images, loop devices and mountinfo, and after it kubelet's unpublish,
unstage and DeleteVolume succeed and leave nothing mounted and no loop device attached.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
import subprocess
import time

import grpc
import pytest

from csi_shim.instance_lock import LOCK_NAME

from tests.root.csi_helpers import REPO, Client, ShimProcess, cleanup, loops_under, mounts_at, mounts_under

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.slow]

START_TIMEOUT = 20.0


# ---- the damage, one function per case: (state dir, snapshot as loaded, journal name) -> the file to name ----

def _snapshot(d):
    return os.path.join(d, "csi-state.json")


def _rewrite(d, change):
    path = _snapshot(d)
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    data = change(data)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return path


def _set(table=None, key=None, field=None, value=None, drop=False, top=None):
    """A change of one field of one record (or of a top-level key when `top` is given)."""
    def change(data):
        if top is not None:
            if drop:
                data.pop(top)
            else:
                data[top] = value
            return data
        records = data[table]
        name = key if key is not None else sorted(records)[0]
        if field is None:
            records[name] = value
        elif drop:
            records[name].pop(field)
        else:
            records[name][field] = value
        return data
    return change


def truncated(d, journal):
    path = _snapshot(d)
    with open(path, "rb") as handle:
        payload = handle.read()
    with open(path, "wb") as handle:
        handle.write(payload[: len(payload) // 2])
    return path


def garbage(d, journal):
    path = _snapshot(d)
    with open(path, "wb") as handle:
        handle.write(random.Random(17).randbytes(300))
    return path


def empty_file(d, journal):
    path = _snapshot(d)
    open(path, "wb").close()
    return path


def a_directory(d, journal):
    path = _snapshot(d)
    os.unlink(path)
    os.mkdir(path)
    return path


def a_fifo(d, journal):
    path = _snapshot(d)
    os.unlink(path)
    os.mkfifo(path, 0o600)
    return path


def a_symlink(d, journal):
    path = _snapshot(d)
    aside = os.path.join(os.path.dirname(d), "elsewhere.json")
    shutil.copyfile(path, aside)
    os.unlink(path)
    os.symlink(aside, path)
    return path


def snapshot_deleted(d, journal):
    path = _snapshot(d)
    os.unlink(path)
    return path


def journal_deleted(d, journal):
    path = os.path.join(d, journal)
    os.unlink(path)
    return path


def journal_a_directory(d, journal):
    path = os.path.join(d, journal)
    os.unlink(path)
    os.mkdir(path)
    return path


def _append(d, journal, payload: bytes):
    path = os.path.join(d, journal)
    with open(path, "ab") as handle:
        handle.write(payload)
    return path


def journal_bad_middle_line(d, journal):
    return _append(d, journal, b'{"t":"staged","k":\n{"t":"staged","k":"other","r":null}\n')


def journal_bad_complete_last_line(d, journal):
    return _append(d, journal, b'\x00\x00{not json}\n')


def journal_unknown_table(d, journal):
    return _append(d, journal, b'{"k":"x","r":null,"t":"mounts"}\n')


def journal_record_without_volume_id(d, journal):
    path = os.path.join(d, journal)
    with open(path, "rb") as handle:
        line = json.loads([raw for raw in handle.read().splitlines() if b'"published"' in raw][-1])
    del line["r"]["volume_id"]
    return _append(d, journal, json.dumps(line).encode() + b"\n")


def everything_deleted(d, journal):
    """The snapshot and its journal gone, the volume images still there: a fresh start would forget them."""
    for name in os.listdir(d):
        if name.startswith("csi-state."):
            os.unlink(os.path.join(d, name))
    return _snapshot(d)


def rewrite(change):
    return lambda d, journal: _rewrite(d, change)


CASES = {
    "truncated": truncated,
    "garbage": garbage,
    "empty-file": empty_file,
    "directory": a_directory,
    "fifo": a_fifo,
    "symlink": a_symlink,
    "version-2": rewrite(_set(top="version", value=2)),
    "version-string": rewrite(_set(top="version", value="1")),
    "version-missing": rewrite(_set(top="version", drop=True)),
    "array": rewrite(lambda data: [data]),
    "null": rewrite(lambda data: None),
    "volumes-list": rewrite(_set(top="volumes", value=[])),
    "staged-null": rewrite(_set(top="staged", value=None)),
    "published-string": rewrite(_set(top="published", value="none")),
    "published-without-volume-id": rewrite(_set("published", field="volume_id", drop=True)),
    "published-record-list": rewrite(_set("published", value=["vol"])),
    "published-key-relative": rewrite(lambda data: {**data, "published": {
        "relative/mount": record for record in data["published"].values()}}),
    "volume-capacity-string": rewrite(_set("volumes", field="capacity_bytes", value="16777216")),
    "volume-status-unknown": rewrite(_set("volumes", field="status", value="half")),
    "volume-unknown-field": rewrite(_set("volumes", field="owner", value="x")),
    "staged-flags-string": rewrite(_set("staged", field="mount_flags", value="rw")),
    "journal-name-slash": rewrite(_set(top="journal", value="../csi-state.1.journal")),
    "journal-name-number": rewrite(_set(top="journal", value=42)),
    "snapshot-deleted": snapshot_deleted,
    "journal-deleted": journal_deleted,
    "journal-directory": journal_a_directory,
    "journal-bad-middle-line": journal_bad_middle_line,
    "journal-bad-complete-last-line": journal_bad_complete_last_line,
    "journal-unknown-table": journal_unknown_table,
    "journal-record-without-volume-id": journal_record_without_volume_id,
    "everything-deleted-images-remain": everything_deleted,
}


# ---- helpers ------------------------------------------------------------------------------------------------

def fingerprint(directory: str) -> dict:
    """The state files as they are: name -> (kind, content or link target); the image directory and the
    instance lock (it holds the pid of whichever process ran last) left out."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name in ("volumes", LOCK_NAME):
            continue
        path = os.path.join(directory, name)
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            with open(path, "rb") as handle:
                out[name] = ("file", handle.read())
        elif stat.S_ISLNK(mode):
            out[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(mode):
            out[name] = ("dir", tuple(sorted(os.listdir(path))))
        else:
            out[name] = ("other", stat.S_IFMT(mode))
    return out


def start_once(shim: ShimProcess, *extra, timeout: float = START_TIMEOUT):
    """Run the shim's command line once: ("exited", code, stdout, stderr) when it ends by itself, ("serving",
    ...) when it bound its socket (then it is stopped), ("hung", ...) when it did neither in time."""
    socket = f"{shim.tmp}/csi.sock"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)
    proc = subprocess.Popen(shim.args + list(extra), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    outcome = "hung"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            outcome = "exited"
            break
        if os.path.exists(socket):
            outcome = "serving"
            break
        time.sleep(0.02)
    if outcome != "exited":
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    out, err = proc.communicate()
    return outcome, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture
def node(tmp_path):
    """A volume created, staged and published at two targets; the shim restarted in between, so the snapshot
    holds the first publish and the journal the second; the shim stopped."""
    shim = ShimProcess(tmp_path).start()
    client = connect(shim)
    try:
        volume_id = client.create("pvc-corruption").volume_id
        staging = client.staging_path(volume_id)
        client.stage(volume_id, staging)
        first = client.target_path("pod-a")
        client.publish(volume_id, staging, first, pod=("shop", "web-0"))
        client.close()
        shim.stop()
        shim = ShimProcess(tmp_path).start()
        client = connect(shim)
        second = client.target_path("pod-b")
        client.publish(volume_id, staging, second, readonly=True, pod=("shop", "web-1"))
        client.close()
        shim.stop()
        node = {"shim": shim, "volume_id": volume_id, "staging": staging, "targets": [first, second],
                "state": f"{tmp_path}/state"}
        yield node
        shim = node["shim"]  # the shim a test started last (unpublish_unstage_delete starts one)
    finally:
        client.close()
        shim.stop()
        cleanup(str(tmp_path))
        assert not mounts_under(str(tmp_path)) and not loops_under(str(tmp_path))


def connect(shim: ShimProcess) -> Client:
    """A client once the shim accepts connections (its socket file appears at bind, before it listens)."""
    client = Client(f"{shim.tmp}/csi.sock", f"{shim.tmp}/kubelet")
    grpc.channel_ready_future(client.channel).result(timeout=30)
    return client


def journal_of(state_dir: str) -> str:
    with open(os.path.join(state_dir, "csi-state.json"), encoding="utf-8") as handle:
        return json.load(handle)["journal"]


def assert_mounted(node) -> None:
    assert len(mounts_at(node["staging"])) == 1
    assert all(len(mounts_at(target)) == 1 for target in node["targets"])
    assert len(loops_under(node["state"])) == 1


def unpublish_unstage_delete(node) -> None:
    """What kubelet and the provisioner do when the pods and the claim go: it must work and leave nothing."""
    shim = ShimProcess(node["shim"].tmp).start()
    node["shim"] = shim
    client = connect(shim)
    try:
        for target in node["targets"]:
            client.unpublish(node["volume_id"], target)
        client.unstage(node["volume_id"], node["staging"])
        client.delete(node["volume_id"])
    finally:
        client.close()
    assert not mounts_under(f"{shim.tmp}/kubelet")
    assert not loops_under(node["state"])
    assert os.listdir(f"{node['state']}/volumes") == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_state_refuses_to_start_and_recovers(node, case):
    state_dir = node["state"]
    named = CASES[case](state_dir, journal_of(state_dir))
    damaged = fingerprint(state_dir)

    outcome, code, out, err = start_once(node["shim"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert (outcome, code) == ("exited", 2), f"refusal: {case}: {outcome} {code}: {err[-2000:]}"
    assert len(lines) == 1 and named in lines[0] and "--recover-state" in lines[0], err
    assert "Traceback" not in err
    assert fingerprint(state_dir) == damaged  # the damaged file is kept as it is
    assert_mounted(node)

    outcome, code, out, err = start_once(node["shim"], "--recover-state", timeout=120)
    assert (outcome, code) == ("exited", 0), f"{outcome} {code}: {out}{err}"
    assert node["volume_id"] in out and "name" in out and "unknown" in out
    for target in node["targets"]:
        assert target in out
    kept = fingerprint(state_dir)
    for name, (kind, content) in damaged.items():
        assert any(other != name and other.startswith(name + ".") and seen == (kind, content)
                   for other, seen in kept.items()), f"{name} was not kept aside: {sorted(kept)}"
    assert_mounted(node)

    unpublish_unstage_delete(node)


def test_a_torn_last_journal_line_is_tolerated(node):
    """Power loss in the middle of an append leaves a line without its newline: the shim starts with the rest."""
    state_dir = node["state"]
    _append(state_dir, journal_of(state_dir), b'{"t":"published","k":"/x","r":{"volu')
    outcome, code, out, err = start_once(node["shim"])
    assert outcome == "serving", err
    unpublish_unstage_delete(node)


def test_recover_state_leaves_a_valid_state_alone(node):
    state_dir = node["state"]
    before = fingerprint(state_dir)
    outcome, code, out, err = start_once(node["shim"], "--recover-state", timeout=120)
    assert (outcome, code) == ("exited", 0), err
    assert "nothing to recover" in out
    assert fingerprint(state_dir) == before
