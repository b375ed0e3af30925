"""agent/avc/podwatch.py: pod names for AVC attribution from a node-scoped list+watch, over real HTTP."""

from types import SimpleNamespace

from agent.avc.attribution import Attributor
from agent.apiclient.client import Client
from agent.apiclient.kubeconfig import ClusterConfig
from agent.avc.podwatch import NodePods, PodWatch, pod_ref
from tests.fake_apiserver import FakeAPIServer
from tests.polling import wait_for


def pod(name, uid, node="node-1", namespace="shop", level=None):
    spec = {"nodeName": node, "containers": [{"name": "app"}]}
    if level:
        spec["securityContext"] = {"seLinuxOptions": {"level": level}}
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": spec, "status": {"phase": "Running"}}



def test_node_pods_by_uid_and_level_and_recently_deleted():
    pods = NodePods(remember_deleted=1)
    pods.replace([pod("web-1", "u1", level="s0:c1,c2"), pod("web-2", "u2", level="s0:c1,c2"),
                  pod("db-0", "u3", level="s0:c3,c4"), {"metadata": {"name": "no-uid"}}])
    assert pods.by_uid("u1").name == "web-1" and len(pods) == 3
    assert pods.by_level("s0:c1,c2") is None  # shared level: ambiguous, as in PodDirectory
    assert pods.by_level("s0:c3,c4").name == "db-0"
    pods.apply("DELETED", pod("db-0", "u3", level="s0:c3,c4"))
    assert pods.by_uid("u3").name == "db-0"  # remembered after deletion, by UID ...
    assert pods.by_level("s0:c3,c4") is None  # ... but not by level
    pods.apply("DELETED", pod("web-2", "u2"))
    assert pods.by_uid("u3") is None and pods.by_uid("u2").name == "web-2"  # the memory is bounded
    pods.apply("ADDED", pod("web-2", "u2"))
    assert pods.by_uid("u2").name == "web-2" and len(pods) == 2
    assert pod_ref({"metadata": {}}) is None
    empty = NodePods()
    assert Attributor(pods=empty).pods is empty  # the watch fills this one later


def test_watch_follows_only_this_node_and_names_denials(tmp_path):
    server = FakeAPIServer().start()
    try:
        server.put(pod("web-1", "11111111-2222-3333-4444-555555555555"))
        server.put(pod("elsewhere", "99999999-2222-3333-4444-555555555555", node="node-2"))
        watch = PodWatch(Client(ClusterConfig(server.url)), "node-1", watch_timeout=1).start()
        try:
            assert watch.synced.wait(5)
            assert watch.pods.by_uid("11111111-2222-3333-4444-555555555555").name == "web-1"
            assert watch.pods.by_uid("99999999-2222-3333-4444-555555555555") is None
            assert wait_for(lambda: server.watching() == 1)
            server.put(pod("web-2", "aaaaaaaa-2222-3333-4444-555555555555"))
            server.put(pod("other", "bbbbbbbb-2222-3333-4444-555555555555", node="node-2"))
            assert wait_for(lambda: watch.pods.by_uid("aaaaaaaa-2222-3333-4444-555555555555") is not None)
            assert watch.pods.by_uid("bbbbbbbb-2222-3333-4444-555555555555") is None

            # A denial from a process in web-2's cgroup is attributed to its name, not only its UID.
            cgroup = ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                      "aaaaaaaa_2222_3333_4444_555555555555.slice/cri-containerd-" + "c" * 64 + ".scope\n")
            proc = tmp_path / "proc" / "4242"
            proc.mkdir(parents=True)
            (proc / "cgroup").write_text(cgroup)
            (proc / "stat").write_text("4242 (app) S " + " ".join(["0"] * 18) + " 777 0 0\n")
            attributor = Attributor(proc_root=str(tmp_path / "proc"), pods=watch.pods)
            found = attributor.attribute(SimpleNamespace(pid=4242, source_level=None))
            assert (found.method, found.namespace, found.pod) == ("cgroup", "shop", "web-2")
        finally:
            watch.stop()
    finally:
        server.stop()


def test_watch_survives_an_unreachable_server():
    watch = PodWatch(Client(ClusterConfig("http://127.0.0.1:9")), "node-1", watch_timeout=1)
    watch._failed(OSError("refused"))
    assert watch.errors == 1 and "refused" in watch.last_error
