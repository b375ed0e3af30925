"""The one reader of API object fields: each field is read once, its JSON type checked as it is read.

A field of the wrong JSON type is an `InvalidManifest` naming the object and the field path (`Pod ns/web-0:
spec.volumes[2] must be an object, got string`), never a traceback and never a string iterated as a list. An
absent or null optional field reads as its empty value, as the API server serves it. Only the fields the code
uses are read, so a field nothing reads (the securityContext of a pod no rule looks at, a PV no pod claims) is
not checked: it cannot change the result.
"""

from __future__ import annotations

from agent.errors import InvalidManifest
from agent.k8s.facts import OwnerRef

_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type: what the user wrote, not Python's name for it."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shape_error(where: str, path: str, expected: str, value) -> InvalidManifest:
    """`Pod ns/web-0: spec.volumes[2] must be an object, got string`."""
    return InvalidManifest(f"{where}: {path} must be {expected}, got {json_type(value)}")


def object_field(value, where: str, path: str) -> dict:
    """An optional object: absent or null reads as {}."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    raise shape_error(where, path, "an object", value)


def string_field(value, where: str, path: str, default=""):
    """An optional string: absent or null reads as `default`."""
    if isinstance(value, str):
        return value
    if value is None:
        return default
    raise shape_error(where, path, "a string", value)


def boolean_field(value, where: str, path: str) -> bool:
    """An optional boolean: absent or null reads as false."""
    if value is None:
        return False
    if value is True or value is False:
        return value
    raise shape_error(where, path, "a boolean", value)


def list_field(value, where: str, path: str) -> list:
    """An optional list, whose items the caller checks as it reads them: absent or null reads as []."""
    if isinstance(value, list):
        return value
    if value is None:
        return []
    raise shape_error(where, path, "a list", value)


def strings_field(value, where: str, path: str) -> tuple[str, ...]:
    """An optional list of strings (access modes, mount options), as a tuple."""
    items = list_field(value, where, path)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise shape_error(where, f"{path}[{index}]", "a string", item)
    return tuple(items)


def object_key(obj, kind: str | None = None) -> tuple[str, str | None, str]:
    """(kind, namespace or None, name) of an API object, its envelope checked: what every index keys on. With
    `kind`, the object may leave its own out, as the items of an API list response do."""
    if not isinstance(obj, dict):
        raise InvalidManifest(f"expected a Kubernetes object, got {json_type(obj)}")
    if kind is None:
        kind = obj.get("kind")
    meta = obj.get("metadata")
    if kind is not None and not isinstance(kind, str):
        raise shape_error("object", "kind", "a string", kind)
    if meta is not None and not isinstance(meta, dict):
        raise shape_error(kind or "object", "metadata", "an object", meta)
    name = meta.get("name") if meta else None
    if not kind or not name:
        # Named by the keys it has, never by formatting the object: that costs what the object expands to.
        raise InvalidManifest(f"object without kind or metadata.name (an object with keys "
                              f"{', '.join(sorted(map(str, obj))[:8])[:120]})")
    namespace = meta.get("namespace")
    if not isinstance(name, str):
        raise shape_error(kind, "metadata.name", "a string", name)
    if namespace is not None and not isinstance(namespace, str):
        raise shape_error(f"{kind} {name}", "metadata.namespace", "a string", namespace)
    return kind, namespace, name


def pod_where(pod: dict) -> str:
    """`Pod ns/name` for messages, from a pod whose metadata may itself be malformed."""
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        return "Pod"
    return f"Pod {meta.get('namespace') or 'default'}/{meta.get('name')}"


def pod_phase(pod: dict, where: str | None = None) -> str:
    """status.phase of a pod ("" when unset), checked: the audit reads it for every pod. `where` names the pod
    in messages (`pod_where` when not given)."""
    status = pod.get("status")
    if status is None:
        return ""
    if not isinstance(status, dict):
        raise shape_error(where or pod_where(pod), "status", "an object", status)
    phase = status.get("phase")
    if isinstance(phase, str):
        return phase
    if phase is None:
        return ""
    raise shape_error(where or pod_where(pod), "status.phase", "a string", phase)


def owner_references(raw, where: str, path: str = "metadata.ownerReferences") -> tuple[OwnerRef, ...]:
    """An object's ownerReferences, checked. `where` names the object, for messages."""
    out = []
    for index, ref in enumerate(list_field(raw, where, path)):
        if type(ref) is not dict:
            raise shape_error(where, f"{path}[{index}]", "an object", ref)
        kind, name, controller = ref.get("kind"), ref.get("name"), ref.get("controller")
        if type(kind) is not str or type(name) is not str or (controller is not None and type(controller) is not bool):
            at = f"{path}[{index}]"  # built only here: the audit reads the references of every pod it resolves
            kind, name = string_field(kind, where, f"{at}.kind"), string_field(name, where, f"{at}.name")
            controller = boolean_field(controller, where, f"{at}.controller")
        out.append(OwnerRef(kind, name, controller is True))
    return tuple(out)
