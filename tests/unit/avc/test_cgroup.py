"""agent/avc/cgroup.py: cgroup paths of cgroupfs/systemd × CRI-O/containerd, cgroup v1 and v2 (pure)."""

import pytest

from agent.avc.cgroup import parse_cgroup_path, parse_proc_cgroup

UID = "26ba375c-1234-4abc-9def-0123456789ab"
UID_ = UID.replace("-", "_")
CID = "a" * 40 + "0123456789abcdef01234567"
assert len(CID) == 64

LAYOUTS = {
    "cgroupfs-crio": f"0::/kubepods/burstable/pod{UID}/crio-{CID}",
    "cgroupfs-containerd": f"0::/kubepods/besteffort/pod{UID}/{CID}",
    "systemd-crio": f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
    "systemd-containerd": (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
                           f"cri-containerd-{CID}.scope"),
    "systemd-guaranteed": f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
    "v1-systemd-crio": "\n".join([
        "12:pids:/", "11:memory:/system.slice",
        f"4:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
        f"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
    ]),
}


EXPECTED = {
    "cgroupfs-crio": ("cgroupfs", "crio"), "cgroupfs-containerd": ("cgroupfs", None),
    "systemd-crio": ("systemd", "crio"), "systemd-containerd": ("systemd", "containerd"),
    "systemd-guaranteed": ("systemd", "containerd"), "v1-systemd-crio": ("systemd", "crio"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cgroup_layouts(layout):
    info = parse_proc_cgroup(LAYOUTS[layout])
    assert info.pod_uid == UID
    assert info.container_id == CID
    assert (info.driver, info.runtime) == EXPECTED[layout]
    assert info.in_pod and not info.monitor


def test_conmon_names_a_container_but_is_not_in_it():
    info = parse_cgroup_path(f"/system.slice/crio-conmon-{CID}.scope")
    assert info.monitor and info.container_id == CID and info.pod_uid is None
    inside_pod = parse_cgroup_path(f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope")
    assert inside_pod.monitor and not inside_pod.in_pod


def test_nested_runtime_takes_the_last_id():
    outer, inner = "b" * 64, "c" * 64
    info = parse_cgroup_path(f"/kubepods/pod{UID}/{outer}/docker/{inner}")
    assert info.container_id == inner


def test_host_cgroup_has_no_pod():
    info = parse_proc_cgroup("0::/system.slice/sshd.service\n")
    assert info.pod_uid is None and info.container_id is None and info.driver is None


def test_v1_lines_prefer_a_pod_then_a_container_then_the_unified_line():
    v1 = (f"12:memory:/system.slice/x.service\n"
          f"11:pids:/docker/{'d' * 64}\n"
          f"1:name=systemd:/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n")
    assert parse_proc_cgroup(v1).pod_uid == UID
    assert parse_proc_cgroup(v1.rsplit("1:name", 1)[0]).container_id == "d" * 64
    assert parse_proc_cgroup("3:cpu:/a\n0::/b\n").path == "/b"
    assert parse_proc_cgroup("") is None and parse_proc_cgroup("not a cgroup line") is None
