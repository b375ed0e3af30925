"""Live conflict detection: the audit's model kept up to date from API watches, Events like the upstream
selinux-warning-controller's, and its metric.

`ConflictModel` is the incremental form of `agent.audit.findings`: a pod change re-evaluates only that pod's volumes; a
claim, PV or CSIDriver change re-evaluates the pods whose resolution read it (an index kept from
`Cluster.storage_keys`). A malformed object is logged and left out, never the end of the watch.
`ConflictWatch` feeds it from list+watch of Pods, PVCs, PVs and CSIDrivers and posts an Event for each new
conflict, with upstream's reasons (`SELinuxLabelConflict`, `SELinuxChangePolicyConflict`) and texts, once per
conflict (a pair that conflicts on two volumes is two conflicts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

from agent.audit.findings import FINISHED_PHASES
from agent.k8s.facts import PodFacts
from agent.k8s.objects import object_key, pod_phase
from agent.k8s.resolve import Cluster
from agent.kubelet.conflicts import (EVENT_REASONS, MULTIPLE_LABELS_REASON, Conflict, VolumeUse, controller_conflicts,
                             multiple_labels_message, multiple_labels_volumes, volume_use)
from agent.kubelet.container_defaults import ContainerDefaults
from agent.errors import InvalidInput
from agent.kubelet.gates import FeatureGates
from agent.apiclient.client import APIError, Client, follow
from agent.metrics import VolumeConflictCollector
from agent.apiclient.retry import Backoff, FailureStreak

log = logging.getLogger("selinux-mount-agent.conflict_watch")

RESOURCES = (
    ("Pod", "/api/v1/pods"),
    ("PersistentVolumeClaim", "/api/v1/persistentvolumeclaims"),
    ("PersistentVolume", "/api/v1/persistentvolumes"),
    ("CSIDriver", "/apis/storage.k8s.io/v1/csidrivers"),
)


def _key(kind: str, obj) -> str | tuple[str, str]:
    """The model's key of an object: "namespace/name" for a pod, (namespace, name) for a claim, the name of a
    PV or CSIDriver. Raises InvalidManifest when the metadata cannot be read."""
    _, namespace, name = object_key(obj, kind)
    if kind == "Pod":
        return f"{namespace or 'default'}/{name}"
    if kind == "PersistentVolumeClaim":
        return (namespace or "default", name)
    return name


def _finished(obj: dict) -> bool:
    """Succeeded or Failed: no longer conflicts (upstream #135628). A malformed status is not finished: the pod
    is evaluated like any other, which records why it cannot be."""
    try:
        return pod_phase(obj) in FINISHED_PHASES
    except InvalidInput:
        return False


def conflict_key(conflict: Conflict) -> tuple:
    """What makes a conflict new: the same pair conflicting on two volumes is two conflicts, as upstream's cache
    keeps them per volume."""
    return (conflict.volume, conflict.property, conflict.pod.ref, conflict.value, conflict.other.ref,
            conflict.other_value)


class ConflictModel:
    """Pods and storage objects by key; per volume, each pod's use; per volume, the current conflicts; per
    storage object, the pods whose resolution read it."""

    def __init__(self, gates: FeatureGates, defaults: ContainerDefaults):
        self.gates, self.defaults = gates, defaults
        self.pods: dict[str, dict] = {}
        self.cluster = Cluster([])
        self.uses: dict[str, dict[str, VolumeUse]] = defaultdict(dict)
        self.volumes_of: dict[str, set[str]] = {}
        self.conflicts: dict[str, list[Conflict]] = {}
        self.unresolved: dict[str, str] = {}  # pod -> why it, or one of its volumes, could not be evaluated
        # pod -> (its facts, its volumes mounted with different labels by its containers: MultipleSELinuxLabels)
        self.multiple: dict[str, tuple[PodFacts, list[str]]] = {}
        self.needs: dict[str, set[tuple]] = {}  # pod -> storage keys (Cluster.storage_keys) it was evaluated with
        self.needed_by: dict[tuple, set[str]] = defaultdict(set)  # storage key -> pods
        self.evaluations = 0  # pod resolutions so far

    # --- changes ------------------------------------------------------------------------------------------

    def apply(self, kind: str, event: str, obj: dict) -> set[str]:
        """Apply one watch event; returns the volume keys whose conflicts were recomputed. An object whose
        metadata cannot be read is logged and left out."""
        try:
            key = _key(kind, obj)
        except InvalidInput as err:
            log.warning("ignoring a %s event for an object that cannot be read: %s", kind, err)
            return set()
        if kind == "Pod":
            return self._pod(key, obj, deleted=event == "DELETED")
        self._storage(kind, key, obj, deleted=event == "DELETED")
        return self._reevaluate(sorted(self.needed_by.get((kind, key), ())))

    def replace(self, kind: str, objects: list[dict]) -> set[str]:
        """A fresh list of one kind (start-up, or after the watch expired). Storage objects that did not change
        re-evaluate nothing."""
        if kind == "Pod":
            touched = set()
            for ref in list(self.pods):
                touched |= self._forget(ref)
            self.pods = {}
            for obj in objects:
                try:
                    ref = _key(kind, obj)
                except InvalidInput as err:
                    log.warning("ignoring a listed Pod that cannot be read: %s", err)
                    continue
                if not _finished(obj):
                    self.pods[ref] = obj
            return touched | self._reevaluate(list(self.pods))
        store = self._store(kind)
        before = dict(store)
        store.clear()
        for obj in objects:
            try:
                store[_key(kind, obj)] = obj
            except InvalidInput as err:
                log.warning("ignoring a listed %s that cannot be read: %s", kind, err)
        self.cluster.storage_changed()
        changed = {key for key in before.keys() | store.keys() if before.get(key) != store.get(key)}
        refs = set()
        for key in changed:
            refs |= self.needed_by.get((kind, key), set())
        return self._reevaluate(sorted(refs))

    def _store(self, kind: str) -> dict:
        return {"PersistentVolumeClaim": self.cluster.pvcs, "PersistentVolume": self.cluster.pvs,
                "CSIDriver": self.cluster.csi_drivers}[kind]

    def _storage(self, kind: str, key, obj: dict, deleted: bool = False) -> None:
        store = self._store(kind)
        if deleted:
            store.pop(key, None)
        else:
            store[key] = obj
        # Resolved PVs and drivers are cached by the index; a storage change invalidates them.
        self.cluster.storage_changed()

    def _pod(self, ref: str, obj: dict, deleted: bool) -> set[str]:
        if deleted or _finished(obj):
            self.pods.pop(ref, None)
            return self._forget(ref)
        self.pods[ref] = obj
        return self._reevaluate([ref])

    def _forget(self, ref: str) -> set[str]:
        self.unresolved.pop(ref, None)
        self.multiple.pop(ref, None)
        for key in self.needs.pop(ref, ()):
            dependents = self.needed_by[key]
            dependents.discard(ref)
            if not dependents:
                del self.needed_by[key]
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
            before = self.unresolved.get(ref)
            touched |= self._forget(ref)
            obj = self.pods[ref]
            needs = self.needs[ref] = self.cluster.storage_keys(obj)
            for key in needs:
                self.needed_by[key].add(ref)
            self.evaluations += 1
            try:
                # Partial, as upstream's syncPod: a claim not seen yet leaves out that volume, not the pod.
                pod = self.cluster.resolve_pod(obj, partial=True)
            except InvalidInput as err:
                # Evaluated again when an object it needs changes (a claim not seen yet), or when it does.
                self.unresolved[ref] = str(err)
                if str(err) != before:
                    log.info("pod %s is left out: %s", ref, err)
                continue
            except Exception as err:  # noqa: BLE001 - one object never stops the others
                self.unresolved[ref] = f"cannot be evaluated: {err!r}"
                log.error("pod %s cannot be evaluated", ref, exc_info=err)
                continue
            if pod.unresolved:
                # Evaluated again when an object it needs appears (storage_keys names it).
                self.unresolved[ref] = "; ".join(pod.unresolved)
                if self.unresolved[ref] != before:
                    log.info("pod %s: a volume is left out: %s", ref, self.unresolved[ref])
            multiple = multiple_labels_volumes(pod)
            if multiple:
                self.multiple[ref] = (pod, multiple)
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
    """The upstream metric served from the live model (read under the watch's lock)."""

    def current():
        with lock:
            return model.all_conflicts()

    return VolumeConflictCollector(current)


def event_for(conflict: Conflict, component: str = "selinux-mount-agent") -> dict:
    """A core/v1 Event on the pod that the conflict is reported to (type Normal, like upstream)."""
    return _pod_event(conflict.pod, EVENT_REASONS[conflict.property], conflict.event_message(), "Normal", component)


def multiple_labels_event(pod: PodFacts, volume_name: str, component: str = "selinux-mount-agent") -> dict:
    """The Warning event upstream's controller posts when a pod's containers mount one volume with different
    labels (selinux_warning_controller.go syncPod)."""
    return _pod_event(pod, MULTIPLE_LABELS_REASON, multiple_labels_message(volume_name), "Warning", component)


def _pod_event(pod: PodFacts, reason: str, message: str, event_type: str, component: str) -> dict:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace,
                           "name": pod.name, "uid": pod.uid},
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


class ConflictWatch:
    """list+watch of the four kinds, each in its own thread, feeding one model under one lock, and posting the
    conflict warnings as Events (what the `controller` subcommand runs)."""

    def __init__(self, client: Client, model: ConflictModel, emit_events: bool = True, watch_timeout: int = 300,
                 backoff: Backoff = Backoff()):
        self.client, self.model = client, model
        self.backoff = backoff
        self.emit_events = emit_events
        self.watch_timeout = watch_timeout
        self.lock = threading.Lock()
        self.emitted: set[tuple] = set()
        self.emitted_multiple: set[tuple[str, str]] = set()  # (pod, volume name) of MultipleSELinuxLabels events
        self.synced = threading.Event()
        self._listed: set[str] = set()
        self._stop = threading.Event()
        self.errors = 0
        # The four watches fail together when the API server goes away: one line for all of them.
        self.streak = FailureStreak(f"API server {client.config.server}")

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
               self._stop, watch_timeout=self.watch_timeout, streak=self.streak, on_error=self._failed,
               backoff=self.backoff)

    def _failed(self, err: Exception) -> None:
        self.errors += 1

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
            multiple = {(ref, name): pod for ref, (pod, names) in self.model.multiple.items() for name in names}
            new_multiple = [(pod, key[1]) for key, pod in multiple.items() if key not in self.emitted_multiple]
            self.emitted_multiple = set(multiple)
        if self.emit_events:
            for conflict in new:
                self._post(conflict.pod, event_for(conflict))
            for pod, volume_name in new_multiple:
                self._post(pod, multiple_labels_event(pod, volume_name))

    def _post(self, pod: PodFacts, event: dict) -> None:
        try:
            self.client.create(f"/api/v1/namespaces/{pod.namespace}/events", event)
        except APIError as err:
            self.errors += 1
            log.warning("cannot post event for %s: %s", pod.ref, err)


def wait_synced(watch: ConflictWatch, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch.synced.wait(0.1):
            return True
    return False
