"""Builders of Kubernetes API objects (as the dicts `kubectl get -o json` gives) for the tests."""

DRIVER = "csi.example.com"


def csidriver(name=DRIVER, se_linux_mount=True):
    spec = {} if se_linux_mount is None else {"seLinuxMount": se_linux_mount}
    return {"kind": "CSIDriver", "metadata": {"name": name}, "spec": spec}


def pv(name="pv1", modes=("ReadWriteOncePod",), source=None, mode=None):
    spec = {"accessModes": list(modes)}
    spec.update(source or {"csi": {"driver": DRIVER, "volumeHandle": name}})
    if mode:
        spec["volumeMode"] = mode
    return {"kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}


def pvc(name="claim", volume="pv1", modes=("ReadWriteOncePod",), namespace="ns", storage_class=None):
    spec = {"accessModes": list(modes)}
    if volume:
        spec["volumeName"] = volume
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod(volumes=None, options=..., policy=None, containers=None, name="p", namespace="ns", **spec_extra):
    if options is ...:
        options = {"level": "s0:c1,c2"}
    security = {}
    if options is not None:
        security["seLinuxOptions"] = options
    if policy:
        security["seLinuxChangePolicy"] = policy
    if volumes is None:
        volumes = [{"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}}]
    if containers is None:
        containers = [{"name": "c", "volumeMounts": [{"name": v["name"], "mountPath": "/" + v["name"]}
                                                     for v in volumes]}]
    spec = {"securityContext": security, "containers": containers, "volumes": volumes}
    spec.update(spec_extra)
    return {"kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def owned(obj, kind, name, labels=None):
    """Give a pod an owner reference (and labels such as pod-template-hash)."""
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": True}]
    if labels:
        obj["metadata"].setdefault("labels", {}).update(labels)
    return obj
