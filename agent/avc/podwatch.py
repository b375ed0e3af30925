"""Names for the pods on this node, from a node-scoped list+watch of the Kubernetes API.

A denial's cgroup gives a pod UID; people read namespaces and names. The agent watches only the pods bound to
its node (`fieldSelector=spec.nodeName=<node>`), so memory and API load stay per node however large the
cluster. Without an API (no in-cluster config, no kubeconfig) attribution keeps working with UIDs.

A pod that was just deleted is remembered for a while by UID: the denials of a container that crashed on its
way out often arrive after the deletion.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from agent.avc.poddir import PodDirectory, PodRef, pods_from_json
from agent.apiclient.client import Client, follow
from agent.apiclient.retry import FailureStreak

log = logging.getLogger("selinux-mount-agent.avc.podwatch")

PODS = "/api/v1/pods"


def pod_ref(obj: dict) -> PodRef | None:
    """The attribution view of one Pod object, or None for an object without a UID (nothing to match)."""
    if not (obj.get("metadata") or {}).get("uid"):
        return None
    return pods_from_json([obj])[0]


class NodePods:
    """The pods of one node by UID and by MCS level, with the interface of `PodDirectory`. Writers (one watch
    thread) swap in a new directory; readers (the AVC watcher) never wait for a lock."""

    def __init__(self, remember_deleted: int = 256):
        self._lock = threading.Lock()
        self._pods: dict[str, PodRef] = {}
        self._deleted: OrderedDict[str, PodRef] = OrderedDict()
        self._remember = remember_deleted
        self._directory = PodDirectory()

    def replace(self, objects: list[dict]) -> None:
        """A fresh list: pods missing from it count as deleted."""
        fresh = {ref.uid: ref for ref in map(pod_ref, objects) if ref is not None}
        with self._lock:
            for uid in self._pods.keys() - fresh.keys():
                self._forget(uid)
            self._pods = fresh
            self._publish()

    def apply(self, event: str, obj: dict) -> None:
        ref = pod_ref(obj)
        if ref is None:
            return
        with self._lock:
            if event == "DELETED":
                if ref.uid in self._pods:
                    self._forget(ref.uid)
                    del self._pods[ref.uid]
            else:
                self._pods[ref.uid] = ref
                self._deleted.pop(ref.uid, None)
            self._publish()

    def _forget(self, uid: str) -> None:
        self._deleted[uid] = self._pods[uid]
        self._deleted.move_to_end(uid)
        while len(self._deleted) > self._remember:
            self._deleted.popitem(last=False)

    def _publish(self) -> None:
        self._directory = PodDirectory(self._pods.values())

    def by_uid(self, uid: str) -> PodRef | None:
        return self._directory.by_uid(uid) or self._deleted.get(uid)

    def by_level(self, level: str) -> PodRef | None:
        # Deleted pods are not matched by level: the runtime may already have given the level to another pod.
        return self._directory.by_level(level)

    def __len__(self) -> int:
        return len(self._directory)


class PodWatch:
    """Keeps a `NodePods` up to date in a background thread."""

    def __init__(self, client: Client, node_name: str, pods: NodePods | None = None, watch_timeout: int = 300):
        self.client = client
        self.node_name = node_name
        self.pods = pods if pods is not None else NodePods()
        self.watch_timeout = watch_timeout
        self.synced = threading.Event()
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PodWatch":
        self._thread = threading.Thread(target=self._run, name="watch-node-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        follow(self.client, PODS, self._listed, self.pods.apply, self._stop, params=params,
               watch_timeout=self.watch_timeout, streak=FailureStreak(f"pod watch for node {self.node_name}"),
               on_error=self._failed)

    def _listed(self, items: list[dict]) -> None:
        self.pods.replace(items)
        if not self.synced.is_set():
            log.info("watching the %d pods of node %s for AVC attribution", len(items), self.node_name)
        self.synced.set()

    def _failed(self, err: Exception) -> None:
        self.errors += 1
        self.last_error = str(err)
