"""Hand-written audit Events, as the API server's log backend writes them (one JSON object per line)."""

import itertools
import json

_ids = itertools.count(1)


def event(user="system:serviceaccount:shop:web", verb="get", uri="/healthz", stage="ResponseComplete",
          ref=None, version="v1", impersonated=None, audit_id=None, **extra) -> dict:
    out = {"kind": "Event", "apiVersion": f"audit.k8s.io/{version}", "level": "Metadata",
           "auditID": audit_id or f"00000000-0000-4000-8000-{next(_ids):012d}", "stage": stage,
           "requestURI": uri, "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
           "sourceIPs": ["10.0.0.1"], "responseStatus": {"metadata": {}, "code": 200}}
    if impersonated:
        out["impersonatedUser"] = {"username": impersonated}
    if ref is not None:
        out["objectRef"] = ref
    out.update(extra)
    return out


def ref(resource, namespace="", name="", group="", subresource="", version="v1") -> dict:
    out = {"resource": resource, "apiVersion": version}
    for key, value in (("namespace", namespace), ("name", name), ("apiGroup", group), ("subresource", subresource)):
        if value:
            out[key] = value
    return out


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def lines(*events) -> list:
    """One source named `log` holding these events (dicts) or raw lines (bytes)."""
    return [("log", [line(e) if isinstance(e, dict) else e for e in events])]
