"""JSON and YAML parsing with bounds on what a file may cost before it is refused.

A dump is read whole, so an input built to be expensive must fail early with one line, not after minutes of
CPU and gigabytes of memory, and never with a traceback:

- nesting deeper than MAX_DEPTH collections (the JSON decoder and the YAML composer recurse per level: a
  RecursionError in JSON; in libyaml's own composer a crash of the process);
- YAML aliases that expand far beyond the text ("billion laughs"): refused by the rule of gopkg.in/yaml.v2
  `decoder.unmarshal` / `allowedAliasRatio`, which sigs.k8s.io/yaml (kubectl, the API server) applies;
- an alias to a node that contains it (a cycle: nothing that walks the object ends);
- integers longer than Python converts from text (`sys.get_int_max_str_digits()`, 4,300 digits).

YAML is parsed by libyaml and its events are turned into objects in compiled code (agent/parsing/_yaml.c, through
agent/parsing/compiled_yaml.py), so that the bounds are checked as the document grows: libyaml's own composer would
recurse without limit. Where that extension was not built, the same is done in Python (agent/parsing/bounded_yaml.py)
on PyYAML's event stream; what either leaves to PyYAML's nodes (rare tags, and the errors PyYAML words itself) is
read again through PyYAML's composer with the same bounds.
"""

from __future__ import annotations

import json
import sys
import threading

from agent.parsing import compiled_yaml
from agent.parsing.bounded_yaml import MAX_DEPTH, NeedsNodes, Refused, bounded_loader_class, object_builder_class
from agent.errors import InvalidManifest

# The recursion limit while parsing on a fresh thread. The C JSON decoder takes one level per nested array or
# object on top of the thread's own frames (measured on CPython 3.11: MAX_DEPTH + 8 lets exactly MAX_DEPTH
# levels through); the YAML composer counts depth itself and needs three frames per level.
_JSON_FRAMES = MAX_DEPTH + 8
_YAML_FRAMES = 4 * MAX_DEPTH + 100


def _on_a_fresh_stack(frames: int, parse, *args):
    """`parse(*args)` in a new thread, so the parser's recursion starts from the same few frames
    whoever calls it, with the interpreter's recursion limit set for that thread's needs meanwhile."""
    outcome = {}

    def run():
        try:
            outcome["value"] = parse(*args)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    old = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(frames)
    except RecursionError:  # this thread is deeper than that already: the parse thread gets the old limit
        pass
    try:
        # A daemon: an interrupted command ends without waiting for the parse.
        thread = threading.Thread(target=run, name="parse", daemon=True)
        thread.start()
        thread.join()
    finally:
        sys.setrecursionlimit(old)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _too_long_integer(source: str) -> InvalidManifest:
    return InvalidManifest(f"{source}: a number has more than {sys.get_int_max_str_digits():,} digits")


def load_json(text: str | bytes, source: str):
    """The parsed JSON text; collections nested deeper than MAX_DEPTH are refused."""
    try:
        return _on_a_fresh_stack(_JSON_FRAMES, json.loads, text)
    except json.JSONDecodeError as err:
        raise InvalidManifest(f"{source}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") \
            from None
    except RecursionError:
        raise InvalidManifest(f"{source}: refused: objects and lists nested more than {MAX_DEPTH:,} levels "
                              "deep") from None
    except ValueError:  # the only other ValueError json.loads raises: int() of a too long number
        raise _too_long_integer(source) from None


def load_yaml_documents(text: str | bytes, source: str, item_hook=None) -> list:
    """Every document of a YAML text, parsed within the bounds above. `item_hook` is given each item of a
    top-level `items` list as it is built, and returns what to keep of it (agent/k8s/stored_objects.py `compact`)."""
    import yaml

    try:
        try:
            if compiled_yaml.available():
                return compiled_yaml.load_all(text, item_hook)
            _warn_not_compiled()
            return _on_a_fresh_stack(_YAML_FRAMES, _read_all, object_builder_class(), text, item_hook)
        except NeedsNodes:  # a tag the direct build leaves to PyYAML's constructor: read again through nodes
            if hasattr(text, "seek"):
                text.seek(0)  # a file read as a stream: from its start again
            return _on_a_fresh_stack(_YAML_FRAMES, _read_all, bounded_loader_class(), text)
    except Refused as err:
        raise InvalidManifest(f"{source}: refused: {err.why}{_where(err.mark)}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidManifest(f"{source}: invalid YAML{_where(mark)}: {problem}") from None
    except ValueError as err:
        if "integer string conversion" in str(err):
            raise _too_long_integer(source) from None
        raise InvalidManifest(f"{source}: invalid YAML: {str(err)[:200]}") from None


_warned_not_compiled = False


def _warn_not_compiled() -> None:
    global _warned_not_compiled
    if not _warned_not_compiled:
        _warned_not_compiled = True
        sys.stderr.write("selinux-mount-agent: warning: the compiled YAML reader (agent.parsing._yaml) was not "
                         "built (libyaml-dev missing at install); YAML input is read in Python, several times "
                         "slower (JSON input is not affected)\n")


def _read_all(loader_class, text: str | bytes, item_hook=None) -> list:
    loader = loader_class(text)
    if item_hook is not None and hasattr(loader, "item_hook"):
        loader.item_hook = item_hook
    try:
        return loader.all_documents()
    finally:
        loader.dispose()


def _where(mark) -> str:
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


