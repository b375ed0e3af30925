"""API objects of a large dump kept as their compact JSON text, and decoded each time they are read.

A `kubectl get ... -o json` dump of 100,000 pods is 120 MiB of text and about 1 GB once parsed into dicts, most
of which the audit reads once and drops: only a first pass over every pod and the pods that share a volume are
looked at twice. So the items of a `kind: *List` document are indexed by their envelope (kind, namespace, name,
uid) and kept as slices of the input (msgspec.Raw); `ObjectStore` decodes one on each read. Reading the envelope
skips the rest of each item in compiled code (msgspec), which is also faster than building every dict.

Everything else takes the stdlib path of agent/parsing/bounded.py: a document that is not a List, or that msgspec
refuses for any reason (invalid JSON, nesting past its depth limit, integers past 64 bits, NaN), is read again by
`load_json`, so errors and bounds read exactly as there. An item whose own text msgspec refuses when it is read
is decoded by `load_json` too. Without msgspec installed, every dump takes the stdlib path.
"""

from __future__ import annotations

try:
    import msgspec
except ImportError:  # pragma: no cover - the dependency is declared; the stdlib path still works without it
    msgspec = None

from agent.parsing.bounded import load_json

_KINDS: dict[str, str] = {}  # one string object per kind name ("Pod"), shared by every object of that kind
_NAMESPACES: dict[str, str] = {}  # likewise per namespace, for the YAML reader (read_list keeps its own)


class StoredObject:
    """One API object as its JSON text, with the envelope fields the index keys on."""

    __slots__ = ("raw", "source", "kind", "namespace", "name", "uid")

    def __init__(self, raw, source: str, kind: str, namespace: str | None, name: str, uid: str | None):
        self.raw, self.source = raw, source
        self.kind, self.namespace, self.name, self.uid = kind, namespace, name, uid

    def decode(self) -> dict:
        try:
            return _DECODER.decode(self.raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            text = bytes(self.raw).decode("utf-8", errors="replace")
            return load_json(text, self.source)  # says what is wrong, as for the whole file


def decoded(value):
    """A stored value as the dict it stands for."""
    return value.decode() if type(value) is StoredObject else value


class ObjectStore(dict):
    """Objects by key, where a value may be a StoredObject: `get` and `[]` give the decoded dict (a new one on
    every read), so callers see plain objects whatever the input was read from."""

    def get(self, key, default=None):
        value = dict.get(self, key, default)
        return value.decode() if type(value) is StoredObject else value

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        return value.decode() if type(value) is StoredObject else value


if msgspec is not None:
    _DECODER = msgspec.json.Decoder()

    class _Metadata(msgspec.Struct):
        name: object = None
        namespace: object = None
        uid: object = None

    class _Envelope(msgspec.Struct):
        kind: object = None
        metadata: _Metadata | None = None
        items: msgspec.Raw | None = None

    class _List(msgspec.Struct):
        kind: object = None
        items: list[msgspec.Raw] | None = None

    _ENVELOPE = msgspec.json.Decoder(_Envelope)
    _LIST = msgspec.json.Decoder(_List)
    _REFUSED = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def read_list(data: bytes, source: str) -> list | None:
    """The objects of a JSON `kind: *List` document, each a StoredObject where its envelope is plain (a kind, a
    string name, an optional string namespace and uid, not itself a List) and the parsed value otherwise (which
    the caller flattens and checks as any other); None when the document is not such a List, or msgspec refuses
    it: the caller then reads it the stdlib way."""
    if msgspec is None or not data.lstrip()[:1] == b"{" or not data.isascii() and not _utf8(data):
        return None
    try:
        document = _LIST.decode(data)
    except _REFUSED:
        return None
    kind = document.kind
    if type(kind) is not str or not kind.endswith("List") or document.items is None:
        return None
    out = []
    namespaces: dict[str, str] = {}  # one string per namespace name, shared by its objects
    for raw in document.items:
        try:
            envelope = _ENVELOPE.decode(raw)
        except _REFUSED:
            out.append(_parsed(raw, source))  # null, not an object, a malformed envelope: checked by the caller
            continue
        kind, meta = envelope.kind, envelope.metadata
        if (type(kind) is not str or not kind or envelope.items is not None or meta is None
                or type(meta.name) is not str or not meta.name
                or (meta.namespace is not None and type(meta.namespace) is not str)
                or (meta.uid is not None and type(meta.uid) is not str)):
            out.append(_parsed(raw, source))
            continue
        kind = _KINDS.setdefault(kind, kind)
        namespace = meta.namespace if meta.namespace is None else namespaces.setdefault(meta.namespace, meta.namespace)
        # Only a pod's uid is read (Cluster.add: one pod renamed between two dumps); other objects drop theirs.
        out.append(StoredObject(raw, source, kind, namespace, meta.name, meta.uid if kind == "Pod" else None))
    return out


def _parsed(raw, source: str):
    return StoredObject(raw, source, "", None, "", None).decode()


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def compact(item, source: str):
    """A parsed List item as a StoredObject of its JSON text, when that text gives it back unchanged (the YAML
    reader calls this for each item it builds, with `plain` False when the item holds a value JSON cannot carry:
    a timestamp, binary, a non-string key, NaN); the item itself otherwise."""
    if msgspec is None or type(item) is not dict:
        return item
    meta = item.get("metadata")
    kind = item.get("kind")
    if type(meta) is not dict or type(kind) is not str or not kind or "items" in item:
        return item
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if (type(name) is not str or not name or (namespace is not None and type(namespace) is not str)
            or (uid is not None and type(uid) is not str)):
        return item
    try:
        raw = msgspec.json.encode(item)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return item
    kind = _KINDS.setdefault(kind, kind)
    if namespace is not None:
        namespace = _NAMESPACES.setdefault(namespace, namespace)
    return StoredObject(raw, source, kind, namespace, name, uid if kind == "Pod" else None)
