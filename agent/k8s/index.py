"""The API objects of a dump or a watch, indexed by kind and key: what resolution looks a reference up in."""

from __future__ import annotations

from agent.k8s.objects import object_key, shape_error
from agent.k8s.stored_objects import ObjectStore, StoredObject, decoded


class ObjectIndex:
    """Pods, PVCs, PVs, CSIDrivers, StorageClasses and owner objects by key. Stores give plain dicts; an object
    of a large dump is kept as its text until read (stored_objects.py)."""

    def __init__(self, objects: list[dict]):
        # Pods by (namespace, name): a dump read twice, or two dumps that overlap, hold each pod once, the last
        # copy read in the place of the first. A pod under another name with the uid of one already read
        # replaces it too.
        self._pods: ObjectStore = ObjectStore()
        self._pod_uids: dict[str, tuple[str, str]] = {}
        self.pvcs: ObjectStore = ObjectStore()
        self.pvs: ObjectStore = ObjectStore()
        self.csi_drivers: ObjectStore = ObjectStore()
        self.storage_classes: ObjectStore = ObjectStore()
        self.other: ObjectStore = ObjectStore()  # owner objects: ReplicaSet, Job, ... by "Kind ns/name"
        for obj in objects:
            self.add(obj)

    @property
    def pods(self) -> list[dict]:
        """The pods, each once, in the order they were first read."""
        return [decoded(value) for value in dict.values(self._pods)]

    def stored_pods(self) -> list:
        """The pods as stored: dicts, or StoredObjects to decode (`decoded`) when read. A pass over a large dump
        keeps these, not the dicts, between two reads of a pod."""
        return list(dict.values(self._pods))

    def add(self, obj) -> None:
        if type(obj) is StoredObject:  # its envelope was checked when it was read
            kind, namespace, name, uid = obj.kind, obj.namespace, obj.name, obj.uid
        else:
            kind, namespace, name = object_key(obj)
            uid = obj["metadata"].get("uid") if kind == "Pod" else None
        if namespace is None:
            namespace = "default"
        if kind == "Pod":
            key = (namespace, name)
            if uid is not None:
                if type(uid) is not str:
                    raise shape_error(f"Pod {namespace}/{name}", "metadata.uid", "a string", uid)
                previous = self._pod_uids.setdefault(uid, key)
                if previous != key:
                    self._same_uid(uid, previous, key)
            self._pods[key] = obj
        elif kind == "PersistentVolumeClaim":
            self.pvcs[(namespace, name)] = obj
        elif kind == "PersistentVolume":
            self.pvs[name] = obj
        elif kind == "CSIDriver":
            self.csi_drivers[name] = obj
        elif kind == "StorageClass":
            self.storage_classes[name] = obj
        else:
            self.other[f"{kind} {namespace}/{name}"] = obj

    def _same_uid(self, uid: str, previous: tuple[str, str], key: tuple[str, str]) -> None:
        """A pod read under another name than an earlier one of the same uid: one object, renamed between two
        dumps, is counted once (the earlier name is dropped unless a later copy gave it another uid)."""
        self._pod_uids[uid] = key
        kept = dict.get(self._pods, previous)
        if kept is not None and (kept.uid if type(kept) is StoredObject else kept["metadata"].get("uid")) == uid:
            del self._pods[previous]
