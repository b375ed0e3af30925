"""The pure decision on a given block device's use: which uses refuse it, and what the message names."""

from csi_shim.device_use import DeviceUse, in_use_problem

DEV = "/dev/disk/by-id/wwn-1"
OURS = {"/k/plugins/x/globalmount", "/k/pods/u/volumes/kubernetes.io~csi/pv/mount"}


def use(**fields) -> DeviceUse:
    return DeviceUse(DEV, "8:16", **fields)


def test_free_device_and_our_own_mounts_pass():
    assert in_use_problem(use(busy=False), OURS) is None
    # Our own mount keeps the device claimed: busy, and explained by it.
    assert in_use_problem(use(busy=True, mounted_here=("/k/pods/u/volumes/kubernetes.io~csi/pv/mount",)), OURS) is None


def test_each_use_elsewhere_refuses_and_is_named():
    problem = in_use_problem(use(busy=True, mounted_here=("/srv",)), OURS)
    assert f"device {DEV} (8:16) is already mounted at /srv" in problem
    problem = in_use_problem(use(busy=True, mounted_elsewhere=((42, "postgres", "/var/lib/pg"),)), OURS)
    assert "'/var/lib/pg' in the mount namespace of process 42 ('postgres')" in problem
    assert in_use_problem(use(busy=True, holders=("dm-3",)), OURS).count("held by dm-3") == 1
    problem = in_use_problem(use(busy=True), OURS)
    assert "refuses to open it exclusively" in problem
    assert problem.endswith("a given block device must not be in use elsewhere")


def test_a_use_elsewhere_is_refused_even_beside_our_own_mount():
    problem = in_use_problem(use(busy=True, mounted_here=("/k/plugins/x/globalmount", "/srv"),
                                 holders=("md0",)), OURS)
    assert "already mounted at /srv" in problem and "held by md0" in problem


def test_another_programs_text_is_shown_escaped():
    problem = in_use_problem(use(busy=True, mounted_elsewhere=((9, "\x1b]0;pwned\x07", "/m\x1b[2J"),)), OURS)
    assert "\x1b" not in problem and "\x07" not in problem and "\\x1b" in problem


def test_copies_of_our_own_mounts_in_other_namespaces_pass():
    target = "/k/pods/u/volumes/kubernetes.io~csi/pv/mount"
    # The host's propagated copy at the same path, and a container's bind mount of the publish.
    copies = ((1, "systemd", target), (77, "nginx", "/usr/share/nginx/html"))
    assert in_use_problem(use(busy=True, mounted_here=(target,), mounted_elsewhere=copies), OURS) is None
    # Without a mount of our own, a mount at another path in another namespace is someone else's.
    assert "process 77" in in_use_problem(use(busy=True, mounted_elsewhere=copies), OURS)
    # Nor is one at our own path there while we have none here: nothing says it is a copy of ours.
    assert "process 1 " in in_use_problem(use(busy=True, mounted_elsewhere=copies[:1]), OURS)
