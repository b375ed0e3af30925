"""agent/avc/attribution.py: cgroup paths (pure), fake /proc trees for cgroupfs/systemd × CRI-O/containerd,
the (pid, start time) cache, and the MCS-level fallback."""

import pytest

from agent.avc.attribution import (
    HOST_PROCESS,
    NO_CATEGORIES,
    PID_GONE,
    RUNTIME_PROCESS,
    UNKNOWN_LEVEL,
    Attributor,
    PodDirectory,
    PodRef,
    parse_cgroup_path,
    parse_proc_cgroup,
    parse_start_time,
    pods_from_json,
)
from agent.avc.records import parse_lines
from agent.errors import InvalidInput

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


def test_start_time_survives_odd_comm():
    fields = " ".join(["S"] + [str(n) for n in range(4, 22)] + ["987654"] + ["0"] * 30)
    assert parse_start_time(f"123 (we ird) )name) {fields}") == 987654
    assert parse_start_time("garbage") is None
    assert parse_start_time("1 (x) S 1 2") is None


# --- fake /proc ----------------------------------------------------------------------------------------


def write_proc(root, pid, cgroup, start=1000):
    directory = root / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
    (directory / "stat").write_text(f"{pid} (cat) {' '.join(fields)}\n")
    (directory / "cgroup").write_text(cgroup + "\n")


def denial(pid=4242, scontext="system_u:system_r:container_t:s0:c1,c2"):
    line = (f'type=AVC msg=audit(1.000:1): avc:  denied  {{ read }} for  pid={pid} comm="cat" name="x" '
            f"scontext={scontext} tcontext=system_u:object_r:etc_t:s0 tclass=file permissive=0")
    if pid is None:
        line = line.replace("pid=None ", "")
    [out], _ = parse_lines([line])
    return out


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


POD = PodRef("shop", "web-7f9c-abcde", UID, "s0:c1,c2", "web", ((CID, "nginx"),))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_attribution_through_fake_proc(tmp_path, layout):
    write_proc(tmp_path, 4242, LAYOUTS[layout])
    attributor = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD]))
    found = attributor.attribute(denial())
    assert found.method == "cgroup"
    assert (found.namespace, found.pod, found.container, found.workload) == ("shop", "web-7f9c-abcde", "nginx", "web")
    assert found.pod_uid == UID and found.container_id == CID
    assert attributor.stats.attributed["cgroup"] == 1


def test_unknown_pod_still_gives_the_uid(tmp_path):
    write_proc(tmp_path, 4242, LAYOUTS["systemd-crio"])
    found = Attributor(proc_root=str(tmp_path)).attribute(denial())
    assert found.attributed and found.pod_uid == UID and found.pod is None


def test_cache_is_keyed_by_start_time(tmp_path):
    clock = Clock()
    write_proc(tmp_path, 4242, LAYOUTS["systemd-crio"], start=1000)
    attributor = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD]), clock=clock, revalidate_after=1.0)
    assert attributor.attribute(denial()).pod_uid == UID
    reads = attributor.stats.proc_reads
    for _ in range(100):
        attributor.attribute(denial())
    assert attributor.stats.proc_reads == reads  # served from the cache inside the window
    # The pid is reused by a host process: same pid, another start time.
    write_proc(tmp_path, 4242, "0::/system.slice/sshd.service", start=2000)
    assert attributor.attribute(denial()).pod_uid == UID  # still inside the window
    clock.now = 5.0
    found = attributor.attribute(denial(scontext="system_u:system_r:sshd_t:s0"))
    assert not found.attributed and found.reason == HOST_PROCESS


def test_a_pod_named_later_is_named_after_the_next_check(tmp_path):
    # The daemon's pod watch fills the directory behind the attributor's back (no add_pod).
    clock = Clock()
    write_proc(tmp_path, 4242, LAYOUTS["systemd-crio"])
    directory = PodDirectory()
    attributor = Attributor(proc_root=str(tmp_path), pods=directory, clock=clock)
    assert attributor.pods is directory  # kept even when empty
    first = attributor.attribute(denial())
    assert first.pod_uid == UID and first.pod is None
    assert attributor.attribute(denial()) is first
    directory.add(POD)
    clock.now = 5.0
    named = attributor.attribute(denial())
    assert named.pod == "web-7f9c-abcde" and named.container == "nginx"
    clock.now = 10.0
    assert attributor.attribute(denial()) is named  # the same object while the pod is unchanged


def test_same_start_time_after_window_keeps_the_entry_without_rereading_cgroup(tmp_path):
    clock = Clock()
    write_proc(tmp_path, 4242, LAYOUTS["cgroupfs-crio"], start=1000)
    attributor = Attributor(proc_root=str(tmp_path), clock=clock)
    attributor.attribute(denial())
    # Same process (same start time) but its cgroup file now says something else: the cache wins.
    (tmp_path / "4242" / "cgroup").write_text("0::/system.slice/other.service\n")
    clock.now = 10.0
    assert attributor.attribute(denial()).pod_uid == UID


def test_gone_pid_falls_back_to_the_mcs_level(tmp_path):
    attributor = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD]))
    found = attributor.attribute(denial(pid=999))
    assert found.method == "mcs" and found.pod == "web-7f9c-abcde" and found.namespace == "shop"
    assert found.container is None  # a level names the pod, not the container


def test_level_mapping_from_the_caller_is_canonicalised(tmp_path):
    other = PodRef("ns", "p", None, None)
    attributor = Attributor(proc_root=str(tmp_path), levels={"s0:c2,c1": other})
    assert attributor.attribute(denial(pid=999)).pod == "p"
    attributor.add_level("s0:c6,c5", PodRef("ns", "q"))
    assert attributor.attribute(denial(pid=999, scontext="system_u:system_r:container_t:s0:c5,c6")).pod == "q"


@pytest.mark.parametrize("pid,scontext,proc,reason", [
    (999, "system_u:system_r:container_t:s0:c7,c8", None, PID_GONE),
    (999, "system_u:system_r:container_t:s0", None, PID_GONE),
    (4242, "system_u:system_r:sshd_t:s0", "0::/system.slice/sshd.service", HOST_PROCESS),
    (4242, "system_u:system_r:container_runtime_t:s0", f"0::/system.slice/crio-conmon-{CID}.scope", RUNTIME_PROCESS),
    (0, "system_u:system_r:container_t:s0", None, NO_CATEGORIES),
    (0, "system_u:system_r:container_t:s0:c7,c8", None, UNKNOWN_LEVEL),
    (0, "garbage", None, NO_CATEGORIES),
])
def test_unattributed_reasons(tmp_path, pid, scontext, proc, reason):
    if proc:
        write_proc(tmp_path, pid, proc)
    attributor = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD]))
    found = attributor.attribute(denial(pid=pid, scontext=scontext))
    assert not found.attributed and found.reason == reason
    assert attributor.stats.unattributed[reason] == 1


def test_host_process_with_a_known_level_is_attributed_by_level(tmp_path):
    # A process started with runcon at a pod's level runs outside the pod's cgroup.
    write_proc(tmp_path, 4242, "0::/user.slice/session-1.scope")
    found = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD])).attribute(denial())
    assert found.method == "mcs" and found.pod == POD.name


def test_shared_level_is_ambiguous():
    a = PodRef("ns", "a", "u1", "s0:c1,c2")
    b = PodRef("ns", "b", "u2", "s0:c1,c2")
    pods = PodDirectory([a, b])
    assert pods.by_level("s0:c1,c2") is None
    assert pods.by_uid("u2") == b


def test_a_pod_added_later_to_an_empty_directory_is_found_by_level(tmp_path):
    directory = PodDirectory()
    attributor = Attributor(proc_root=str(tmp_path), pods=directory)
    assert attributor.attribute(denial(pid=999)).reason == PID_GONE
    directory.add(POD)
    assert attributor.attribute(denial(pid=999)).pod == POD.name


def test_updating_a_pod_keeps_its_level():
    pods = PodDirectory([POD])
    updated = PodRef(POD.namespace, POD.name, POD.uid, POD.level, POD.workload, ((CID, "nginx"), ("b" * 64, "side")))
    pods.add(updated)
    assert pods.by_level(POD.level) is updated and pods.by_uid(UID) is updated and len(pods) == 1


def test_a_changed_level_drops_the_old_mapping():
    a = PodRef("ns", "a", "u1", "s0:c1,c2")
    b = PodRef("ns", "b", "u2", "s0:c1,c2")
    pods = PodDirectory([a, b])
    assert pods.by_level("s0:c1,c2") is None
    moved = PodRef("ns", "a", "u1", "s0:c3,c4")
    pods.add(moved)
    assert pods.by_level("s0:c3,c4") is moved
    assert pods.by_level("s0:c1,c2") is b  # a no longer shares it
    pods.remove(b)
    assert pods.by_level("s0:c1,c2") is None and pods.by_uid("u2") is None and len(pods) == 1


def test_pods_without_uid_are_told_apart_by_name():
    pods = PodDirectory([PodRef("ns", "a", None, "s0:c1,c2")])
    pods.add(PodRef("ns", "a", None, "s0:c1,c2", "web"))
    assert pods.by_level("s0:c1,c2").workload == "web"
    pods.add(PodRef("ns", "b", None, "s0:c1,c2"))
    assert pods.by_level("s0:c1,c2") is None


def test_applied_levels_are_counted_once_per_pod_and_forgotten(tmp_path):
    attributor = Attributor(proc_root=str(tmp_path))
    web, db = PodRef("shop", "web-1"), PodRef("shop", "db-0")
    attributor.add_level("s0:c1,c2", web)
    attributor.add_level("s0:c2,c1", web)  # a second volume of the same pod
    first = attributor.attribute(denial(pid=999))
    assert first.method == "mcs" and first.pod == "web-1"
    assert attributor.attribute(denial(pid=999)) is first  # one object per pod, for the metrics' memo
    attributor.add_level("s0:c1,c2", db)
    assert attributor.attribute(denial(pid=999)).reason == PID_GONE  # two pods: ambiguous
    attributor.remove_level("s0:c1,c2", web)
    assert attributor.attribute(denial(pid=999)).pod == "db-0"
    attributor.remove_level("s0:c1,c2", db)
    assert not attributor.attribute(denial(pid=999)).attributed


def test_an_applied_level_is_named_as_the_directory_knows_the_pod(tmp_path):
    # The CSI records name a pod by namespace and name only; the pod watch adds UID and workload.
    attributor = Attributor(proc_root=str(tmp_path), pods=PodDirectory([POD]))
    attributor.add_level(POD.level, PodRef(POD.namespace, POD.name))
    found = attributor.attribute(denial(pid=999))
    assert found.pod_uid == UID and found.workload == "web"
    attributor.add_level(POD.level, PodRef("other", "intruder"))
    assert not attributor.attribute(denial(pid=999)).attributed  # the agent saw two pods at this level


def test_cache_is_bounded(tmp_path):
    attributor = Attributor(proc_root=str(tmp_path), max_cache=10)
    for pid in range(1, 100):
        attributor.attribute(denial(pid=pid))
    assert len(attributor._cache) <= 10


KUBECTL = {
    "apiVersion": "v1", "kind": "List", "items": [{
        "kind": "Pod",
        "metadata": {"name": "web-7f9c-abcde", "namespace": "shop", "uid": UID,
                     "labels": {"pod-template-hash": "7f9c"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7f9c"}]},
        "spec": {"securityContext": {"seLinuxOptions": {"level": "s0:c2,c1"}}},
        "status": {"containerStatuses": [{"name": "nginx", "containerID": f"cri-o://{CID}"}]},
    }],
}


def test_pods_from_kubectl_json():
    [pod] = pods_from_json(KUBECTL)
    assert pod == POD


def test_pods_from_short_form():
    [pod] = pods_from_json([{"namespace": "shop", "name": "web-7f9c-abcde", "uid": UID, "level": "s0:c1,c2",
                             "workload": "web", "containers": {f"containerd://{CID}": "nginx"}}])
    assert pod == POD


@pytest.mark.parametrize("document", [42, {"kind": "Service"}, [1], [{"name": "x"}],
                                      [{"namespace": "a", "name": "b", "containers": []}]])
def test_bad_pod_maps(document):
    with pytest.raises(InvalidInput):
        pods_from_json(document)
