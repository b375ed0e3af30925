"""The pure parts of mounter: classifying a mountinfo entry and the shared-superblock refusal."""

from agent.label import Label
from agent.node.mountinfo import parse_line
from csi_shim import mounter

A = "system_u:object_r:container_file_t:s0:c1,c2"


def line(point, context=None, dev="7:0"):
    sup = "rw" + (f',context="{context}"' if context else "") + ",seclabel"
    return parse_line(f"40 27 {dev} / {point} rw,relatime shared:1 - ext4 /dev/loop0 {sup}")


def test_classify():
    want = Label.parse(A)
    assert mounter.classify(None, want, "/p").status == mounter.NOT_MOUNTED
    assert mounter.classify(line("/p"), None, "/p").status == mounter.NO_CONTEXT
    assert mounter.classify(line("/p"), want, "/p").status == mounter.DROPPED
    assert mounter.classify(line("/p", "system_u:object_r:container_file_t:s0:c2,c1"), want, "/p").ok
    mismatch = mounter.classify(line("/p", "system_u:object_r:container_file_t:s0:c3"), want, "/p")
    assert mismatch.status == mounter.MISMATCH and 'mountinfo shows context="' in mismatch.describe()
    assert "shows no context=" in mounter.classify(line("/p"), want, "/p").describe()


def test_shared_superblock_conflict():
    table = [line("/k/staging", A)]
    other = Label.parse("system_u:object_r:container_file_t:s0:c9")
    why = mounter.shared_superblock_conflict(table, "7:0", other, "/k/target2", selinux=True)
    assert why and "/k/staging" in why and "share that superblock" in why
    assert mounter.shared_superblock_conflict(table, "7:0", Label.parse(A), "/k/t", selinux=True) is None
    assert mounter.shared_superblock_conflict(table, "7:1", other, "/k/t", selinux=True) is None
    # Without SELinux mountinfo shows no context, so only a context it does show can conflict.
    assert mounter.shared_superblock_conflict([line("/k/s")], "7:0", other, "/k/t", selinux=False) is None
    assert mounter.shared_superblock_conflict([line("/k/s")], "7:0", other, "/k/t", selinux=True)


def _entry(mount_id: int, root: str, point: str, options: str = "rw", dev: str = "254:0", sup: str = "rw"):
    return parse_line(f"{mount_id} 1 {dev} {root} {point} {options},relatime - ext4 /dev/vda {sup}")


def test_writable_views_of_a_read_only_bind():
    bind = _entry(50, "/srv/hp/vol-1", "/var/lib/kubelet/pods/p/mount", "ro")
    table = [_entry(20, "/", "/"), _entry(30, "/srv", "/mnt/srv"), _entry(31, "/srv/other", "/mnt/other"),
             _entry(40, "/srv", "/mnt/srv-ro", "ro"), _entry(41, "/", "/mnt/disk", dev="8:1"), bind]
    # top-most first; the read-only, the other device's and the unrelated subtree's mounts are no views
    assert [(m.mount_id, inside) for m, inside in mounter.writable_views(bind, table)] == [
        (30, "hp/vol-1"), (20, "srv/hp/vol-1")]
    same_root = _entry(60, "/srv/hp/vol-1", "/mnt/vol")
    assert [(m.mount_id, inside) for m, inside in mounter.writable_views(bind, table + [same_root])][0] == (60, "")
    # a prefix that is not a whole path component is not an ancestor
    assert mounter.writable_views(_entry(51, "/srv/hp/vol-10", "/t", "ro"), [_entry(32, "/srv/hp/vol-1", "/u")]) == []
    # a read-only superblock has no writable view at all
    assert mounter.writable_views(_entry(52, "/srv/hp/vol-1", "/t", "ro", sup="ro"), table) == []
