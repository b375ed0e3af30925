"""Typed state records: what the shim writes round-trips unchanged; every other shape is refused by name."""

import json

import pytest

from csi_shim import records
from csi_shim.records import DeviceVolume, ImageVolume, Published, RecordInvalid, Staged

LABEL = "system_u:object_r:container_file_t:s0:c1,c2"

IMAGE = {"name": "pvc-1", "capacity_bytes": 16777216, "fs_type": "ext4", "image": "/s/volumes/vol-1.img",
         "status": "done"}
DEVICE = {"device": "/dev/sdb", "device_number": "8:16", "fs_type": "xfs", "status": "pending"}
STAGED = {"staging_path": "/k/plugins/x/globalmount", "label": LABEL, "mount_flags": [f'context="{LABEL}"'],
          "fs_type": "ext4", "device": "/dev/loop3", "status": "done", "verification": "applied"}
PUBLISHED = {"volume_id": "vol-1", "staging_path": "/k/plugins/x/globalmount", "label": None, "readonly": True,
             "mount_flags": ["noexec"], "pod": ["shop", "web-0"], "status": "done", "verification": "no-context",
             "action": "nothing"}
VALID = [("volumes", "vol-1", IMAGE), ("volumes", "pv-1", DEVICE), ("staged", "vol-1", STAGED),
         ("published", "/k/pods/u/volumes/kubernetes.io~csi/pv/mount", PUBLISHED),
         # What the shim writes while a step is pending, and for a proxied backend that does not stage.
         ("staged", "vol-1", dict(STAGED, device=None, status="pending", verification=None, label=None)),
         ("published", "/t", dict(PUBLISHED, staging_path=None, pod=None, verification=None, action=None,
                                  status="pending")),
         ("volumes", "vol-2", dict(IMAGE, name=""))]  # rebuilt by --recover-state: name unknown


@pytest.mark.parametrize("table,key,value", VALID)
def test_valid_records_round_trip_unchanged(table, key, value):
    record = records.parse(table, key, value)
    assert record.to_json() == value
    assert json.dumps(record.to_json(), sort_keys=True) == json.dumps(value, sort_keys=True)
    assert records.normalised(table, key, record) == value  # a typed record is accepted for a write too


def test_the_volume_table_holds_two_kinds():
    assert isinstance(records.parse("volumes", "v", IMAGE), ImageVolume)
    assert isinstance(records.parse("volumes", "v", DEVICE), DeviceVolume)
    assert isinstance(records.parse("staged", "v", STAGED), Staged)
    assert isinstance(records.parse("published", "/t", PUBLISHED), Published)


def without(record, field):
    return {k: v for k, v in record.items() if k != field}


WRONG = [
    # (table, key, value, field named, words in the reason)
    ("published", "/t", without(PUBLISHED, "volume_id"), "volume_id", "missing"),
    ("published", "/t", dict(PUBLISHED, volume_id=""), "volume_id", "empty"),
    ("published", "/t", dict(PUBLISHED, volume_id=7), "volume_id", "not a string"),
    ("published", "/t", dict(PUBLISHED, readonly="false"), "readonly", "not true or false"),
    ("published", "/t", dict(PUBLISHED, readonly=0), "readonly", "not true or false"),
    ("published", "/t", dict(PUBLISHED, pod=["shop"]), "pod", "[namespace, name]"),
    ("published", "/t", dict(PUBLISHED, pod="shop/web-0"), "pod", "[namespace, name]"),
    ("published", "/t", dict(PUBLISHED, staging_path="relative"), "staging_path", "not an absolute path"),
    ("published", "/t", dict(PUBLISHED, mount_flags="ro"), "mount_flags", "array of strings"),
    ("published", "/t", dict(PUBLISHED, mount_flags=["ro", 1]), "mount_flags", "array of strings"),
    ("published", "/t", dict(PUBLISHED, label="not a label"), "label", "SELinux"),
    ("published", "/t", dict(PUBLISHED, action=3), "action", "not a string"),
    ("published", "relative/target", PUBLISHED, None, "key"),
    ("published", "/t", ["vol-1"], None, "not an object"),
    ("published", "/t", None, None, "not an object"),
    ("staged", "vol-1", without(STAGED, "staging_path"), "staging_path", "missing"),
    ("staged", "vol-1", dict(STAGED, mount_flags="rw"), "mount_flags", "array of strings"),
    ("staged", "vol-1", dict(STAGED, status="half"), "status", "not one of"),
    ("staged", "vol-1", dict(STAGED, device=5), "device", "not a path"),
    ("staged", "vol-1", dict(STAGED, verification=["applied"]), "verification", "not a string"),
    ("staged", "", STAGED, None, "key"),
    ("volumes", "vol-1", dict(IMAGE, capacity_bytes="16777216"), "capacity_bytes", "whole number"),
    ("volumes", "vol-1", dict(IMAGE, capacity_bytes=True), "capacity_bytes", "whole number"),
    ("volumes", "vol-1", dict(IMAGE, capacity_bytes=1.5), "capacity_bytes", "whole number"),
    ("volumes", "vol-1", dict(IMAGE, capacity_bytes=0), "capacity_bytes", "not positive"),
    ("volumes", "vol-1", dict(IMAGE, image="vol-1.img"), "image", "not an absolute path"),
    ("volumes", "vol-1", dict(IMAGE, status=None), "status", "not one of"),
    ("volumes", "vol-1", dict(IMAGE, owner="x"), "owner", "not a field"),
    ("volumes", "vol-1", without(IMAGE, "fs_type"), "fs_type", "missing"),
    ("volumes", "vol-1", {}, "name", "missing"),
    ("volumes", "vol-1", "vol-1.img", None, "not an object"),
    ("volumes", "pv-1", dict(DEVICE, device_number="8"), "device_number", "major:minor"),
    ("volumes", "pv-1", dict(DEVICE, device_number=2064), "device_number", "major:minor"),
    ("volumes", "pv-1", dict(DEVICE, image="/x.img"), "image", "not a field"),
]


@pytest.mark.parametrize("table,key,value,field,why", WRONG)
def test_every_wrong_shape_is_refused_by_table_key_and_field(table, key, value, field, why):
    with pytest.raises(RecordInvalid) as caught:
        records.parse(table, key, value)
    err = caught.value
    assert (err.table, err.key, err.field) == (table, key, field)
    assert why in str(err) and repr(key) in str(err) and table in str(err)
    with pytest.raises(RecordInvalid):  # and a write of it too
        records.normalised(table, key, value)


def test_typed_records_are_frozen():
    record = records.parse("published", "/t", PUBLISHED)
    with pytest.raises(AttributeError):
        record.volume_id = "other"
    assert record.replace(status="pending").to_json() == dict(PUBLISHED, status="pending")
