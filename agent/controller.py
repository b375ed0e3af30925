"""Live conflict detection: the audit's model kept up to date from API watches, Events like the upstream
selinux-warning-controller's, and its metric.

`ConflictModel` is the incremental form of `agent.audit`: a pod change re-evaluates only that pod's volumes; a
claim, PV or CSIDriver change re-evaluates the pods that depend on it. `ConflictController` feeds it from
list+watch of Pods, PVCs, PVs and CSIDrivers and posts an Event for each new conflict, with upstream's reasons
(`SELinuxLabelConflict`, `SELinuxChangePolicyConflict`) and texts, once per conflict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

from agent.audit import FINISHED_PHASES
from agent.cluster import Cluster
from agent.conflicts import EVENT_REASONS, Conflict, VolumeUse, controller_conflicts, volume_use
from agent.defaults import ContainerDefaults
from agent.errors import InvalidInput
from agent.gates import FeatureGates
from agent.kubeapi import APIError, Client, follow
from agent.metrics import VolumeConflictCollector

log = logging.getLogger("selinux-mount-agent.controller")

RESOURCES = (
    ("Pod", "/api/v1/pods"),
    ("PersistentVolumeClaim", "/api/v1/persistentvolumeclaims"),
    ("PersistentVolume", "/api/v1/persistentvolumes"),
    ("CSIDriver", "/apis/storage.k8s.io/v1/csidrivers"),
)


def _ref(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def conflict_key(conflict: Conflict) -> tuple:
    return (conflict.property, conflict.pod.ref, conflict.value, conflict.other.ref, conflict.other_value)


class ConflictModel:
    """Pods and storage objects by key; per volume, each pod's use; per volume, the current conflicts."""

    def __init__(self, gates: FeatureGates, defaults: ContainerDefaults):
        self.gates, self.defaults = gates, defaults
        self.pods: dict[str, dict] = {}
        self.cluster = Cluster([])
        self.uses: dict[str, dict[str, VolumeUse]] = defaultdict(dict)
        self.volumes_of: dict[str, set[str]] = {}
        self.conflicts: dict[str, list[Conflict]] = {}
        self.unresolved: dict[str, str] = {}  # pod -> why it could not be evaluated (a claim not seen yet, ...)

    # --- changes ------------------------------------------------------------------------------------------

    def apply(self, kind: str, event: str, obj: dict) -> set[str]:
        """Apply one watch event; returns the volume keys whose conflicts were recomputed."""
        if kind == "Pod":
            return self._pod(obj, deleted=event == "DELETED")
        self._storage(kind, obj, deleted=event == "DELETED")
        return self._reevaluate(list(self.pods))

    def replace(self, kind: str, objects: list[dict]) -> set[str]:
        """A fresh list of one kind (start-up, or after the watch expired)."""
        if kind == "Pod":
            touched = set()
            for ref in list(self.pods):
                touched |= self._forget(ref)
            self.pods = {_ref(obj): obj for obj in objects
                         if (obj.get("status") or {}).get("phase") not in FINISHED_PHASES}
            return touched | self._reevaluate(list(self.pods))
        store = self._store(kind)
        store.clear()
        for obj in objects:
            self._storage(kind, obj)
        return self._reevaluate(list(self.pods))

    def _store(self, kind: str) -> dict:
        return {"PersistentVolumeClaim": self.cluster.pvcs, "PersistentVolume": self.cluster.pvs,
                "CSIDriver": self.cluster.csi_drivers}[kind]

    def _storage(self, kind: str, obj: dict, deleted: bool = False) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name")) if kind == "PersistentVolumeClaim" \
            else meta.get("name")
        store = self._store(kind)
        if deleted:
            store.pop(key, None)
        else:
            store[key] = obj
        # Resolved PVs and drivers are cached by the index; a storage change invalidates them.
        self.cluster.storage_changed()

    def _pod(self, obj: dict, deleted: bool) -> set[str]:
        ref = _ref(obj)
        if deleted or (obj.get("status") or {}).get("phase") in FINISHED_PHASES:
            self.pods.pop(ref, None)
            return self._forget(ref)
        self.pods[ref] = obj
        return self._reevaluate([ref])

    def _forget(self, ref: str) -> set[str]:
        self.unresolved.pop(ref, None)
        touched = self.volumes_of.pop(ref, set())
        for key in touched:
            self.uses[key].pop(ref, None)
            if not self.uses[key]:
                del self.uses[key]
        self._recompute(touched)
        return touched

    def _reevaluate(self, refs: list[str]) -> set[str]:
        touched = set()
        for ref in refs:
            touched |= self._forget(ref)
            try:
                pod = self.cluster.resolve_pod(self.pods[ref])
            except InvalidInput as err:
                self.unresolved[ref] = str(err)  # evaluated again when the missing object arrives
                continue
            keys = set()
            for volume in pod.volumes:
                use = volume_use(pod, volume, self.gates, self.defaults)
                if use is not None:
                    self.uses[use.volume][ref] = use
                    keys.add(use.volume)
            self.volumes_of[ref] = keys
            touched |= keys
        self._recompute(touched)
        return touched

    def _recompute(self, keys: set[str]) -> None:
        for key in keys:
            uses = list(self.uses.get(key, {}).values())
            found = controller_conflicts(uses) if len(uses) > 1 else []
            if found:
                self.conflicts[key] = found
            else:
                self.conflicts.pop(key, None)

    # --- views --------------------------------------------------------------------------------------------

    def all_conflicts(self) -> list[Conflict]:
        return [conflict for key in sorted(self.conflicts) for conflict in self.conflicts[key]]


def conflict_collector(model: ConflictModel, lock: threading.Lock) -> VolumeConflictCollector:
    """The upstream metric served from the live model (read under the controller's lock)."""

    def current():
        with lock:
            return model.all_conflicts()

    return VolumeConflictCollector(current)


def event_for(conflict: Conflict, component: str = "selinux-mount-agent") -> dict:
    """A core/v1 Event on the pod that the conflict is reported to (type Normal, like upstream)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{conflict.pod.name}.", "namespace": conflict.pod.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": conflict.pod.namespace,
                           "name": conflict.pod.name, "uid": conflict.pod.uid},
        "reason": EVENT_REASONS[conflict.property],
        "message": conflict.event_message(),
        "type": "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


class ConflictController:
    """list+watch of the four kinds, each in its own thread, feeding one model under one lock."""

    def __init__(self, client: Client, model: ConflictModel, emit_events: bool = True, watch_timeout: int = 300):
        self.client, self.model = client, model
        self.emit_events = emit_events
        self.watch_timeout = watch_timeout
        self.lock = threading.Lock()
        self.emitted: set[tuple] = set()
        self.synced = threading.Event()
        self._listed: set[str] = set()
        self._stop = threading.Event()
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        threads = [threading.Thread(target=self._loop, args=resource, name=f"watch-{resource[0]}", daemon=True)
                   for resource in RESOURCES]
        for thread in threads:
            thread.start()
        while not self._stop.is_set():
            self._stop.wait(0.5)

    def _loop(self, kind: str, path: str) -> None:
        def listed(items):
            def replace():
                self.model.replace(kind, items)
                self._listed.add(kind)

            self._handle(replace)
            if len(self._listed) == len(RESOURCES):
                self.synced.set()

        follow(self.client, path, listed, lambda event, obj: self._handle(lambda: self.model.apply(kind, event, obj)),
               self._stop, watch_timeout=self.watch_timeout, on_error=self._failed)

    def _failed(self, err: Exception) -> None:
        self.errors += 1
        if isinstance(err, APIError):
            log.warning("%s", err)
        else:
            log.error("watch failed: %r", err, exc_info=err)

    def _handle(self, change) -> None:
        """Apply a change; once every kind has been listed, post an Event for each conflict not reported yet."""
        with self.lock:
            change()
            if len(self._listed) < len(RESOURCES):
                return  # half a picture: wait until everything is listed before reporting anything
            current = {conflict_key(c): c for c in self.model.all_conflicts()}
            new = [c for key, c in current.items() if key not in self.emitted]
            # A conflict that went away is reported again if it comes back.
            self.emitted = (self.emitted & set(current)) | {conflict_key(c) for c in new}
        if self.emit_events:
            for conflict in new:
                self._post(conflict)

    def _post(self, conflict: Conflict) -> None:
        try:
            self.client.create(f"/api/v1/namespaces/{conflict.pod.namespace}/events", event_for(conflict))
        except APIError as err:
            self.errors += 1
            log.warning("cannot post event for %s: %s", conflict.pod.ref, err)


def wait_synced(controller: ConflictController, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if controller.synced.wait(0.1):
            return True
    return False
