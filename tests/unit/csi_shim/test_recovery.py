"""Recovery after a restart: reconcile (pure, table-driven), rebuild for --recover-state (pure), set-aside."""

import os

import pytest

from agent.errors import StateInvalid
from agent.node.mountinfo import parse_line
from csi_shim import records
from csi_shim.journal import State, empty
from csi_shim.records import DONE, PENDING
from csi_shim.recovery import rebuild, reconcile, refuse_forgetting, set_aside
from tests.unit.csi_shim.test_journal import published, staged, volume

IMAGES = "/state/volumes"
ROOT = "/var/lib/kubelet"
LABEL = "system_u:object_r:container_file_t:s0:c1,c2"


def data(**parts):
    base = empty()
    base.update(parts)
    return base


# ---- reconcile: one row per record and node state ------------------------------------------------------------

# (name, records, mount points, loops, expected records left, detach, remove, rmdirs)
V1 = volume(volume_id="v1")
V2 = volume(status=PENDING, volume_id="v2")
GIVEN = {"device": "/dev/loop5", "device_number": "7:5", "fs_type": "ext4", "status": PENDING}
ROWS = [
    ("done volume kept", data(volumes={"v1": V1}), {}, {}, data(volumes={"v1": V1}), [], [], []),
    ("half-created image removed", data(volumes={"v2": V2}), {}, {}, data(),
     [], [V2["image"], V2["image"] + ".tmp"], []),
    ("given device never removed, even pending", data(volumes={"pv": GIVEN}), {},
     {"/dev/loop5": ("/srv/disk.img", "7:5")}, data(volumes={"pv": GIVEN}), [], [], []),
    ("mounted stage kept", data(staged={"v1": staged("/k/s1")}), {"/k/s1": "7:1"}, {},
     data(staged={"v1": staged("/k/s1")}), [], [], []),
    ("pending mounted stage stays pending", data(staged={"v1": staged("/k/s1", PENDING)}), {"/k/s1": "7:1"}, {},
     data(staged={"v1": staged("/k/s1", PENDING)}), [], [], []),
    ("unmounted stage forgotten", data(staged={"v1": staged("/k/s1")}), {}, {}, data(), [], [], []),
    ("mounted publish kept", data(published={"/k/t": published()}), {"/k/t": "7:1"}, {},
     data(published={"/k/t": published()}), [], [], []),
    ("done publish not mounted forgotten", data(published={"/k/t": published()}), {}, {}, data(), [], [], []),
    ("pending publish not mounted: record and empty directory go",
     data(published={"/k/t": published(status=PENDING)}), {}, {}, data(), [], [], ["/k/t"]),
    ("our unused loop detached", data(), {}, {"/dev/loop3": (f"{IMAGES}/v3.img", "7:3")}, data(),
     ["/dev/loop3"], [], []),
    ("our mounted loop kept", data(), {"/k/s": "7:3"}, {"/dev/loop3": (f"{IMAGES}/v3.img", "7:3")}, data(),
     [], [], []),
    ("foreign loop kept", data(), {}, {"/dev/loop9": ("/elsewhere.img", "7:9")}, data(), [], [], []),
]


@pytest.mark.parametrize("name,before,mounts,loops,after,detach,remove,rmdirs", ROWS, ids=[r[0] for r in ROWS])
def test_reconcile(name, before, mounts, loops, after, detach, remove, rmdirs):
    snapshot = repr(before)
    result, got_detach, got_remove, got_rmdirs, notes = reconcile(before, mounts, loops, IMAGES)
    assert (result, got_detach, got_remove, got_rmdirs) == (after, detach, remove, rmdirs)
    assert repr(before) == snapshot  # pure: the input is untouched
    forgotten = [key for table in ("volumes", "staged", "published") for key in before[table]
                 if key not in result[table]]
    for said in forgotten + detach:  # every change is said in the log
        assert any(said in note for note in notes), (said, notes)


def test_reconcile_keeps_given_devices_known_after_their_mounts_are_gone():
    """kubelet still unpublishes and unstages a pre-provisioned volume: its record must outlive its mounts."""
    before = data(volumes={"pv-1": dict(GIVEN, status=DONE)}, staged={"pv-1": staged("/k/s1")},
                  published={"/k/t1": published("pv-1")})
    after, detach, remove, _, _ = reconcile(before, {}, {"/dev/loop5": ("/srv/disk.img", "7:5")}, IMAGES)
    assert after["volumes"] == before["volumes"] and detach == [] and remove == []


# ---- rebuild -------------------------------------------------------------------------------------------------

def mount(mount_id, number, point, options="rw,relatime", super_options="rw", source="/dev/loop1", parent=1):
    return parse_line(f"{mount_id} {parent} {number} / {point} {options} shared:1 - ext4 {source} {super_options}")


STAGING = f"{ROOT}/plugins/kubernetes.io/csi/local.selinux-mount-agent/abc/globalmount"
TARGET_A = f"{ROOT}/pods/uid-a/volumes/kubernetes.io~csi/pv/mount"
TARGET_B = f"{ROOT}/pods/uid-b/volumes/kubernetes.io~csi/pv/mount"


def test_rebuild_from_images_loops_and_mounts():
    images = {"vol-1": (f"{IMAGES}/vol-1.img", 1 << 24, "ext4"), "vol-2": (f"{IMAGES}/vol-2.img", 1 << 25, "xfs")}
    loops = {"/dev/loop1": (f"{IMAGES}/vol-1.img", "7:1"), "/dev/loop2": (f"{IMAGES}/vol-2.img", "7:2")}
    table = [mount(30, "7:1", STAGING, super_options=f'rw,context="{LABEL}"'),
             mount(31, "7:1", TARGET_A, super_options=f'rw,context="{LABEL}"'),
             mount(32, "7:1", TARGET_B, options="ro,nosuid,relatime", super_options=f'rw,context="{LABEL}"'),
             mount(33, "7:1", "/elsewhere/mnt")]  # outside the kubelet root: not ours to record
    result, rebuilt, unknown = rebuild(images, loops, table, ROOT, IMAGES)
    assert result["volumes"] == {
        "vol-1": {"name": "", "capacity_bytes": 1 << 24, "fs_type": "ext4", "image": f"{IMAGES}/vol-1.img",
                  "status": DONE},
        "vol-2": {"name": "", "capacity_bytes": 1 << 25, "fs_type": "xfs", "image": f"{IMAGES}/vol-2.img",
                  "status": DONE}}
    assert result["staged"] == {"vol-1": {
        "staging_path": STAGING, "label": LABEL, "mount_flags": [f'context="{LABEL}"'], "fs_type": "ext4",
        "device": "/dev/loop1", "status": DONE, "verification": "applied"}}
    assert set(result["published"]) == {TARGET_A, TARGET_B}
    b = result["published"][TARGET_B]
    assert (b["volume_id"], b["readonly"], b["mount_flags"], b["pod"], b["staging_path"]) == (
        "vol-1", True, ["nosuid", f'context="{LABEL}"'], None, STAGING)
    for table_name, rows in result.items():
        if table_name != "version":
            for key, value in rows.items():
                records.parse(table_name, key, value)  # every rebuilt record loads
    text = "\n".join(rebuilt)
    assert "name is unknown" in text and "pod is unknown" in text and TARGET_A in text and unknown == []


def test_rebuild_says_what_it_cannot_know():
    images = {"vol-1": (f"{IMAGES}/vol-1.img", 1 << 24, None), "vol-3": (f"{IMAGES}/vol-3.img", 1 << 24, "ext4")}
    loops = {"/dev/loop4": (f"{IMAGES}/gone.img", "7:4"), "/dev/loop3": (f"{IMAGES}/vol-3.img", "7:3")}
    given = f"{ROOT}/plugins/kubernetes.io/csi/local.selinux-mount-agent/def/globalmount"
    table = [mount(40, "8:16", given, source="/dev/sdb"),
             mount(41, "0:55", f"{ROOT}/pods/uid/volumes/kubernetes.io~projected/token", source="tmpfs"),
             mount(42, "7:3", f"{ROOT}/plugins/kubernetes.io/csi/x/one/globalmount"),
             mount(43, "7:3", f"{ROOT}/plugins/kubernetes.io/csi/x/two/globalmount")]
    result, rebuilt, unknown = rebuild(images, loops, table, ROOT, IMAGES)
    assert set(result["volumes"]) == {"vol-3"}
    text = "\n".join(unknown)
    assert "vol-1.img: holds no filesystem" in text
    assert "/dev/loop4" in text and "gone.img" in text
    assert given in text and "given block device" in text
    assert "projected" not in text  # a tmpfs of kubelet's own is nobody's volume
    assert "two/globalmount: a second mount" in text


# ---- set aside, and no silent empty start -------------------------------------------------------------------

def test_set_aside_renames_every_state_file_and_deletes_nothing(tmp_path):
    for name in ("csi-state.json", "csi-state.12.journal", "csi-state.json.tmp.1.2"):
        (tmp_path / name).write_text(name)
    (tmp_path / "csi-state.13.journal").mkdir()
    (tmp_path / "volumes").mkdir()
    moved = set_aside(str(tmp_path))
    assert len(moved) == 4
    names = sorted(os.listdir(tmp_path))
    assert "volumes" in names and not {"csi-state.json", "csi-state.12.journal"} & set(names)
    kept = {n.split(".bad-")[0]: n for n in names if ".bad-" in n}
    assert set(kept) == {"csi-state.json", "csi-state.12.journal", "csi-state.json.tmp.1.2",
                         "csi-state.13.journal"}
    assert (tmp_path / kept["csi-state.json"]).read_text() == "csi-state.json"
    assert State(str(tmp_path / "csi-state.json")).fresh  # the loader no longer finds them


def test_no_state_but_images_is_refused(tmp_path):
    images = tmp_path / "volumes"
    images.mkdir()
    state = State(str(tmp_path / "csi-state.json"))
    refuse_forgetting(state, str(images))  # a fresh node: fine
    (images / "vol-1.img").write_bytes(b"")
    with pytest.raises(StateInvalid, match="holds 1 volume image"):
        refuse_forgetting(state, str(images))


def test_start_up_recovery_names_an_image_no_record_names(tmp_path):
    from csi_shim.config import ShimConfig
    from csi_shim.recovery import recover

    config = ShimConfig(csi_endpoint=f"unix://{tmp_path}/csi.sock", state_dir=str(tmp_path), node_id="n")
    state = State(config.state_file)
    state.replace(data())
    os.makedirs(config.image_dir)
    orphan = os.path.join(config.image_dir, "vol-9.img")
    open(orphan, "wb").close()
    notes = recover(state, config)
    state.close()
    assert any(orphan in note and "no record" in note for note in notes)
    assert os.path.exists(orphan)  # never deleted
