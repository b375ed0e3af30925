"""Read Kubernetes objects from YAML or JSON files: single objects, multi-document YAML, and `kind: List`
(what `kubectl get ... -o json|yaml` prints). The edge where files become dicts; errors name the file.

A file with no document at all (zero bytes, only whitespace or comments, or `null`) is refused when the caller
needs objects: it is what a failed `kubectl get ... > FILE` leaves behind. An empty List, what kubectl prints
when nothing matches, is a valid file with no objects."""

from __future__ import annotations

import codecs
import gc
from contextlib import contextmanager

from agent.parsing.bounded import load_json, load_yaml_documents
from agent.k8s.objects import json_type
from agent.errors import InvalidManifest
from agent.k8s.stored_objects import StoredObject, compact, read_list


def flatten(document, source: str) -> list[dict]:
    """Objects in one parsed document; `List` kinds (and `*List`) are opened up, nulls skipped. Items the
    reader kept as their text (StoredObject) stay so."""
    if document is None:
        return []
    if type(document) is StoredObject:
        return [document]
    if not isinstance(document, dict):
        raise InvalidManifest(f"{source}: expected a Kubernetes object or a List, got {json_type(document)}")
    kind = document.get("kind", "")
    if isinstance(kind, str) and kind.endswith("List") and "items" in document:
        items = document.get("items") or []
        if not isinstance(items, list):
            raise InvalidManifest(f"{source}: {kind}.items must be a list, got {json_type(items)}")
        # What kubectl prints: a List of plain objects (no nulls, no nested Lists), each its own flattening.
        plain = [item for item in items if type(item) is StoredObject or type(item) is dict and "items" not in item]
        if len(plain) == len(items):
            return plain
        out = []
        for item in items:
            out.extend(flatten(item, source))
        return out
    return [document]


def parse_text(text: str | bytes, source: str, allow_empty: bool = True) -> list[dict]:
    """The objects in a file's text (or its UTF-8 bytes, which the parsers read without a decoded copy). With
    allow_empty=False, a text with no document but nulls is an error."""
    documents = _documents(text, source)
    if not allow_empty and all(document is None for document in documents):
        raise InvalidManifest(f"{source}: no objects in the file: it is empty (a dump of a cluster with nothing "
                              "to list is a List with no items)")
    objects = []
    for document in documents:
        objects.extend(flatten(document, source))
    return objects


def _documents(text, source: str) -> list:
    if not isinstance(text, (str, bytes)):  # an open file of YAML (_objects_of)
        return load_yaml_documents(text, source, item_hook=lambda item: compact(item, source))
    first = text.lstrip()[:1]
    if first in ("{", "[", b"{", b"["):
        data = load_json(text, source)
        return data if isinstance(data, list) else [data]
    return load_yaml_documents(text, source, item_hook=lambda item: compact(item, source))


@contextmanager
def batch_run():
    """For one-shot commands over large dumps: pause the cyclic garbage collector.

    Parsing and analysing a dump allocates millions of dicts, lists and frozen values, none of them in reference
    cycles. The collector would rescan them again and again (a 100k-pod dump is 4-5x slower with it on); the
    process ends soon after, so nothing is lost by not collecting.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _objects_of(source, path: str, allow_empty: bool) -> list:
    """The objects of one file's bytes, or of an open binary file: a JSON List through read_list (items kept as
    text), other JSON whole, YAML streamed from the file (libyaml reads it in chunks, so a large dump is never
    held as text besides the objects built from it)."""
    if isinstance(source, bytes):
        data = source
    else:
        data = b""
        while not data.strip():  # the first byte that is not white space says JSON or YAML
            chunk = source.read(1 << 16)
            if not chunk:
                break
            data += chunk
        if data.lstrip()[:1] in (b"{", b"["):
            data += source.read()
        elif data.strip():
            _check_utf8(data, source, path)
            source.seek(0)
            return parse_text(source, path, allow_empty)
    listed = read_list(data, path)  # a JSON List, its items kept as text; None: any other file
    if listed is not None:
        out = []
        for item in listed:
            out.extend(flatten(item, path))
        return out
    _check_utf8(data, None, path)
    return parse_text(data, path, allow_empty)


def _check_utf8(data: bytes, rest, path: str) -> None:
    """Refuse a file that is not UTF-8, in one line: `data`, then what `rest` (a file) still holds, in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        chunk = data
        while chunk:
            if not chunk.isascii() or decoder.buffer:
                decoder.decode(chunk)
            chunk = rest.read(1 << 20) if rest is not None else b""
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidManifest(f"{path}: not UTF-8 text") from None


def load_files(paths: list[str], allow_empty: bool = True) -> list[dict]:
    """The objects of every file, in order. allow_empty=False refuses a file with no document (see above)."""
    objects = []
    for path in paths:
        try:
            if path == "-":
                import sys

                objects.extend(_objects_of(sys.stdin.buffer.read(), path, allow_empty))
            else:
                with open(path, "rb") as handle:
                    objects.extend(_objects_of(handle, path, allow_empty))
        except OSError as err:
            raise InvalidManifest(f"cannot read {path}: {err.strerror}") from None
    return objects
