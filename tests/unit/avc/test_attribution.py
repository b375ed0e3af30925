"""agent/avc/attribution.py: attribution through fake /proc trees for cgroupfs/systemd × CRI-O/containerd,
the (pid, start time) cache, and the MCS-level fallback."""

import pytest

from agent.avc.assembler import parse_lines
from agent.avc.attribution import HOST_PROCESS, NO_CATEGORIES, PID_GONE, RUNTIME_PROCESS, UNKNOWN_LEVEL, Attributor
from agent.avc.poddir import PodDirectory, PodRef
from tests.unit.avc.test_cgroup import CID, LAYOUTS, UID
from tests.unit.avc.test_poddir import POD
from tests.unit.avc.test_procfs import write_proc


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


def test_a_pod_added_later_to_an_empty_directory_is_found_by_level(tmp_path):
    directory = PodDirectory()
    attributor = Attributor(proc_root=str(tmp_path), pods=directory)
    assert attributor.attribute(denial(pid=999)).reason == PID_GONE
    directory.add(POD)
    assert attributor.attribute(denial(pid=999)).pod == POD.name


def test_applied_levels_are_counted_once_per_pod_and_forgotten(tmp_path):
    attributor = Attributor(proc_root=str(tmp_path))
    web, db = PodRef("shop", "web-1"), PodRef("shop", "db-0")
    attributor.add_level("s0:c1,c2", web)
    attributor.add_level("s0:c2,c1", web)  # a second volume of the same pod
    first = attributor.attribute(denial(pid=999))
    assert first.method == "mcs" and first.pod == "web-1"
    assert attributor.attribute(denial(pid=999)) is first  # built once per pod, not per denial
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
