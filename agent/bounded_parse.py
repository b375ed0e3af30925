"""JSON and YAML parsing with bounds on what a file may cost before it is refused.

A dump is read whole, so an input built to be expensive must fail early with one line, not after minutes of
CPU and gigabytes of memory, and never with a traceback:

- nesting deeper than MAX_DEPTH collections (the JSON decoder and the YAML composer recurse per level: a
  RecursionError in JSON; in libyaml's own composer a crash of the process);
- YAML aliases that expand far beyond the text ("billion laughs"): refused by the rule of gopkg.in/yaml.v2
  `decoder.unmarshal` / `allowedAliasRatio`, which sigs.k8s.io/yaml (kubectl, the API server) applies;
- an alias to a node that contains it (a cycle: nothing that walks the object ends);
- integers longer than Python converts from text (`sys.get_int_max_str_digits()`, 4,300 digits).

YAML is parsed by libyaml when PyYAML has it (`yaml.CParser`, about 10x the pure-Python parser); the events
are composed here, in Python, so that the bounds are checked as the document grows (libyaml's composer would
recurse without limit). Without libyaml a warning says so once, and the pure-Python parser does the same work.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Hashable
import threading

from agent.errors import InvalidManifest

MAX_DEPTH = 1000

# gopkg.in/yaml.v2 decode.go: up to 400,000 decoded nodes 99% may come from aliases, from 4,000,000 on 10%,
# linearly in between; the rule applies once more than 100 nodes came from aliases and more than 1,000 in all.
_ALIAS_RATIO_LOW, _ALIAS_RATIO_HIGH = 400_000, 4_000_000

_warned_pure_python = False


def allowed_alias_ratio(decoded: int) -> float:
    """The share of decoded nodes that may come from alias expansion (yaml.v2 `allowedAliasRatio`)."""
    if decoded <= _ALIAS_RATIO_LOW:
        return 0.99
    if decoded >= _ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decoded - _ALIAS_RATIO_LOW) / (_ALIAS_RATIO_HIGH - _ALIAS_RATIO_LOW)


# The recursion limit while parsing on a fresh thread. The C JSON decoder takes one level per nested array or
# object on top of the thread's own frames (measured on CPython 3.11: MAX_DEPTH + 8 lets exactly MAX_DEPTH
# levels through); the YAML composer counts depth itself and needs three frames per level.
_JSON_FRAMES = MAX_DEPTH + 8
_YAML_FRAMES = 4 * MAX_DEPTH + 100


def _on_a_fresh_stack(frames: int, parse, *args):
    """`parse(text, source)` in a new thread, so the parser's recursion starts from the same few frames
    whoever calls it, with the interpreter's recursion limit set for that thread's needs meanwhile."""
    outcome = {}

    def run():
        try:
            outcome["value"] = parse(*args)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(frames)
    try:
        thread = threading.Thread(target=run, name="parse")
        thread.start()
        thread.join()
    finally:
        sys.setrecursionlimit(old)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _too_long_integer(source: str) -> InvalidManifest:
    return InvalidManifest(f"{source}: a number has more than {sys.get_int_max_str_digits():,} digits")


def load_json(text: str, source: str):
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


def load_yaml_documents(text: str, source: str) -> list:
    """Every document of a YAML text, parsed within the bounds above."""
    import yaml

    loader = _bounded_loader_class()(text)
    try:
        return _on_a_fresh_stack(_YAML_FRAMES, _all_documents, loader)
    except _Refused as err:
        raise InvalidManifest(f"{source}: refused: {err.why}{_where(err.mark)}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InvalidManifest(f"{source}: invalid YAML{_where(mark)}: {problem}") from None
    except ValueError as err:
        if "integer string conversion" in str(err):
            raise _too_long_integer(source) from None
        raise InvalidManifest(f"{source}: invalid YAML: {str(err)[:200]}") from None
    finally:
        loader.dispose()


def _all_documents(loader) -> list:
    documents = []
    while loader.check_data():
        documents.append(loader.get_data())
    return documents


def _where(mark) -> str:
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


class _Refused(Exception):
    def __init__(self, why: str, mark):
        super().__init__(why)
        self.why = why
        self.mark = mark


_loader_class = None


def _bounded_loader_class():
    """A SafeLoader whose composer counts depth and alias expansion; built once, on libyaml's parser if any."""
    global _loader_class, _warned_pure_python
    if _loader_class is not None:
        return _loader_class
    import yaml
    from yaml.composer import Composer, ComposerError
    from yaml.constructor import ConstructorError, SafeConstructor
    from yaml.events import AliasEvent, ScalarEvent, SequenceStartEvent
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode
    from yaml.resolver import Resolver

    STR, MAP, SEQ = Resolver.DEFAULT_SCALAR_TAG, Resolver.DEFAULT_MAPPING_TAG, Resolver.DEFAULT_SEQUENCE_TAG
    MERGE, VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"
    assert not Resolver.yaml_path_resolvers, "the composer below leaves path resolvers out"

    if yaml.__with_libyaml__:
        from yaml._yaml import CParser

        parser_bases = (CParser,)
    else:
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        parser_bases = (Reader, Scanner, Parser)
        if not _warned_pure_python:
            _warned_pure_python = True
            sys.stderr.write("selinux-mount-agent: warning: PyYAML was built without libyaml; YAML input is read "
                             "with its pure-Python parser, about 10x slower (JSON input is not affected)\n")

    class BoundedComposer(Composer):
        """PyYAML's composer, counting as yaml.v2 counts: every node decoded, those decoded through aliases,
        and how deep the collections are nested."""

        def compose_document(self):
            self.depth = self.decoded = self.aliased = 0
            self.sizes = {}  # anchor -> nodes its node stands for, aliases inside it expanded
            return super().compose_document()

        def compose_node(self, parent, index):
            # Composer.compose_node with the counting added and, for speed, scalars composed in place and the
            # path-resolver steps left out (the safe loader has no path resolvers). Plain scalars resolve once
            # per spelling: a dump repeats the same few values (phases, access modes, kinds) many times.
            event = self.peek_event()
            kind = event.__class__
            if kind is ScalarEvent:
                self.get_event()
                self.decoded += 1
                tag = event.tag
                if tag is None or tag == "!":
                    implicit = event.implicit
                    if implicit[0]:
                        tag = self.plain_tags.get(event.value)
                        if tag is None:
                            tag = self.plain_tags[event.value] = self.resolve(ScalarNode, event.value, implicit)
                    else:
                        tag = self.resolve(ScalarNode, event.value, implicit)
                node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                if event.anchor is not None:
                    self._anchor(event, node)
                    self.sizes[event.anchor] = 1
                    self.anchored.add(id(node))
                return node
            if kind is AliasEvent:
                node = super().compose_node(parent, index)  # refuses an undefined anchor
                size = self.sizes.get(event.anchor)
                if size is None:
                    raise _Refused(f"alias *{event.anchor} refers to a node that contains it",
                                   event.start_mark)
                self.decoded += size
                self.aliased += size
                if self.aliased > 100 and self.decoded > 1000 and \
                        self.aliased / self.decoded > allowed_alias_ratio(self.decoded):
                    raise _Refused("the document expands its aliases (*name) to more nodes than it writes out "
                                   "(the limit kubectl and the API server apply)", event.start_mark)
                return node
            start = self.decoded
            self.decoded += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Refused(f"objects and lists nested more than {MAX_DEPTH:,} levels deep", event.start_mark)
            if event.anchor is not None:
                self._anchor(event, None)
            if kind is SequenceStartEvent:
                node = self.compose_sequence_node(event.anchor)
            else:
                node = self.compose_mapping_node(event.anchor)
            self.depth -= 1
            if event.anchor is not None:
                self.sizes[event.anchor] = self.decoded - start
                self.anchored.add(id(node))
            return node

        def _anchor(self, event, node):
            """Composer's duplicate-anchor check; a scalar's node is recorded here, a collection's by its
            compose method."""
            if event.anchor in self.anchors:
                raise ComposerError(f"found duplicate anchor {event.anchor!r}; first occurrence",
                                    self.anchors[event.anchor].start_mark, "second occurrence", event.start_mark)
            if node is not None:
                self.anchors[event.anchor] = node

    class BoundedLoader(*parser_bases, BoundedComposer, SafeConstructor, Resolver):
        def __init__(self, stream):
            if len(parser_bases) == 1:
                parser_bases[0].__init__(self, stream)
            else:  # Reader, Scanner, Parser
                parser_bases[0].__init__(self, stream)
                parser_bases[1].__init__(self)
                parser_bases[2].__init__(self)
            BoundedComposer.__init__(self)
            self.built = {}  # id of an anchored node -> what it was built into
            self.anchored = set()  # ids of the nodes of this document that have an anchor
            self.plain_tags = {}  # the tag of each plain scalar spelling, as Resolver.resolve gives it
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        # libyaml's parser brings its own composing methods; the bounded ones come first.
        get_single_node = Composer.get_single_node
        check_node = Composer.check_node
        get_node = Composer.get_node
        compose_document = BoundedComposer.compose_document
        compose_node = BoundedComposer.compose_node
        compose_scalar_node = Composer.compose_scalar_node
        compose_sequence_node = Composer.compose_sequence_node
        compose_mapping_node = Composer.compose_mapping_node

        def construct_document(self, node):
            """SafeConstructor.construct_document, with plain strings, maps and lists built directly: most of a
            dump, and 2-3x faster than the generic construction that every other node still goes through."""
            data = self.build(node)
            while self.state_generators:  # left by the generic construction, as SafeConstructor runs them
                generators, self.state_generators = self.state_generators, []
                for generator in generators:
                    for _ in generator:
                        pass
            self.constructed_objects = {}
            self.recursive_objects = {}
            self.deep_construct = False
            self.built = {}
            self.anchored = set()
            return data

        def build(self, node):
            cls, tag = node.__class__, node.tag
            if cls is ScalarNode:
                return node.value if tag == STR else self.construct_object(node, deep=True)
            if id(node) in self.anchored:  # an alias gives the same object, as SafeConstructor does
                found = self.built.get(id(node))
                if found is not None:
                    return found
            if cls is MappingNode and tag == MAP:
                if any(key.tag == MERGE or key.tag == VALUE for key, _ in node.value):
                    self.flatten_mapping(node)  # `<<` merge keys and `=` keys, as SafeConstructor reads them
                data = {}
                for key_node, value_node in node.value:
                    if key_node.__class__ is ScalarNode and key_node.tag == STR:
                        key = key_node.value
                    else:
                        key = self.build(key_node)
                        if not isinstance(key, Hashable):
                            raise ConstructorError("while constructing a mapping", node.start_mark,
                                                   "found unhashable key", key_node.start_mark)
                    data[key] = self.build(value_node)
            elif cls is SequenceNode and tag == SEQ:
                data = [self.build(child) for child in node.value]
            else:
                data = self.construct_object(node, deep=True)
            if id(node) in self.anchored:
                self.built[id(node)] = data
            return data

    _loader_class = BoundedLoader
    return _loader_class
