"""How the API server turns a request URL into RBAC attributes, from the rules of apiserver's
endpoints/request/requestinfo.go, for audit events that carry no objectRef.

Facts mirrored (upstream behaviour, our code):
- `/api/{version}/...` (no group) and `/apis/{group}/{version}/...` are resource requests when a part follows
  the version; shorter paths (`/api`, `/apis/apps/v1`, `/healthz`) are non-resource requests whose verb is the
  lower-case HTTP method.
- `/namespaces/{ns}/{resource}/...` sets the namespace; `status` and `finalize` right after the namespace are
  subresources of the namespace itself.
- parts read as resource / name / subresource; the legacy `/watch/` and `/proxy/` prefixes set the verb
  (proxy takes no subresource).
- GET without a name is `list`, or `watch` when the first `watch` query value is anything but `0`/`false`;
  DELETE without a name is `deletecollection`; a `fieldSelector` requiring `metadata.name=X` names X.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from agent.rbac.attributes import Request, non_resource_request, resource_request

GROUPLESS_PREFIXES = frozenset({"api"})
API_PREFIXES = frozenset({"api", "apis"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
NO_SUBRESOURCE_VERBS = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
METHOD_VERBS = {"post": "create", "get": "get", "head": "get", "put": "update", "patch": "patch",
                "delete": "delete"}
# Verbs an audit event may already carry for a resource request (the API server's own reading).
KUBE_VERBS = frozenset({"create", "get", "list", "watch", "update", "patch", "delete", "deletecollection",
                        "proxy"})


def split_uri(uri: str) -> tuple[str, str]:
    """(path, query) of a request URI as the audit log records it (`/api/v1/pods?watch=1`)."""
    path, _, query = uri.partition("?")
    path = path.partition("#")[0]
    return path, query


def _parts(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


def _watch_requested(query: dict) -> bool:
    values = query.get("watch")
    return bool(values) and values[0].lower() not in ("false", "0")


def _selected_name(query: dict) -> str:
    """The name a `fieldSelector` pins down with an exact `metadata.name` term, else ''."""
    for selector in query.get("fieldSelector", [])[:1]:
        for term in selector.split(","):
            field, sep, value = term.partition("==") if "==" in term else term.partition("=")
            if sep and not field.endswith("!") and field.strip() == "metadata.name":
                value = value.strip()
                # Upstream takes it only when it could be a path segment.
                return value if value not in (".", "..") and "/" not in value and "%" not in value else ""
    return ""


def request_from_uri(verb: str, uri: str) -> Request:
    """The attributes of a request with this verb (the lower-case HTTP method, or the verb an audit event
    recorded) to this URI."""
    verb = verb.lower()
    path, query_text = split_uri(uri)
    parts = _parts(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return non_resource_request(verb, path)
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return non_resource_request(verb, path)
        group, parts = parts[0], parts[1:]
    parts = parts[1:]  # the version: RBAC is version-independent

    legacy_prefix = parts[0] in SPECIAL_VERBS
    if legacy_prefix:
        if len(parts) < 2:
            return non_resource_request(verb, path)  # upstream refuses to read it as a resource request
        kube_verb, parts = parts[0], parts[1:]
    elif verb in KUBE_VERBS and verb not in METHOD_VERBS:
        kube_verb = verb  # list, watch, deletecollection, create, update: already the API server's reading
    else:
        kube_verb = METHOD_VERBS.get(verb, "")

    namespace = ""
    if parts[0] == "namespaces":
        if len(parts) > 1:
            namespace = parts[1]
            if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
                parts = parts[2:]

    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and kube_verb not in NO_SUBRESOURCE_VERBS else ""

    if not name and not legacy_prefix and kube_verb in ("get", "list", "watch"):
        query = parse_qs(query_text, keep_blank_values=True)
        if kube_verb == "get":
            kube_verb = "watch" if _watch_requested(query) else "list"
        name = _selected_name(query)
    if not name and kube_verb == "delete":
        kube_verb = "deletecollection"
    return resource_request(kube_verb, group, resource, subresource, namespace, name)
