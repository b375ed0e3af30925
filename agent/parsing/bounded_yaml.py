"""YAML loaders that read what `yaml.safe_load_all` reads, within bounds on depth and alias expansion.

YAML is read by the compiled reader (agent/parsing/compiled_yaml.py over _yaml.c) when it was built; this module
holds its bounds and words, and the Python readers used where it was not built or where it hands a text over.
Two loaders, both on libyaml's parser when PyYAML has it (`yaml._yaml.CParser`, about 10x its pure-Python
parser; without it a warning says so once and the pure-Python parser does the same work):

- the object builder turns parser events straight into dicts, lists and scalars: no node graph, no marks kept,
  so a large dump (one List document) takes a fraction of the memory and time of PyYAML's own loaders. Tags it
  does not build itself (`!!set`, `!!omap`, `!!pairs`, application tags) raise NeedsNodes;
- the bounded loader is PyYAML's safe loader with the counting composer below; the caller reads a document again
  with it when the builder needs nodes, so those tags and their errors are exactly PyYAML's.

Both count as gopkg.in/yaml.v2 `decoder.unmarshal` counts (what sigs.k8s.io/yaml, so kubectl and the API server,
applies): every node decoded, aliases expanded, and refuse a document once more than `allowed_alias_ratio` of
it came from aliases; they also refuse nesting past MAX_DEPTH and an alias to a node that contains it.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

MAX_DEPTH = 1000

# gopkg.in/yaml.v2 decode.go: up to 400,000 decoded nodes 99% may come from aliases, from 4,000,000 on 10%,
# linearly in between; the rule applies once more than 100 nodes came from aliases and more than 1,000 in all.
_ALIAS_RATIO_LOW, _ALIAS_RATIO_HIGH = 400_000, 4_000_000

STR, MAP, SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
MERGE, VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"
# Scalar tags whose SafeConstructor function returns the value at once (no generator, no node kept).
DIRECT_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in
                               ("null", "bool", "int", "float", "binary", "timestamp"))
_PLAIN_TAGS_KEPT = 4096  # spellings whose resolved tag the object builder keeps (keys and values that repeat)
_NOT_JSON = frozenset(f"tag:yaml.org,2002:{name}" for name in ("binary", "timestamp"))

# The words of each refusal (agent/parsing/compiled_yaml.py refuses with the same).
DEPTH_REFUSED = f"objects and lists nested more than {MAX_DEPTH:,} levels deep"
ALIASES_REFUSED = ("the document expands its aliases (*name) to more nodes than it writes out (the limit kubectl "
                   "and the API server apply)")


def cycle_refused(anchor: str) -> str:
    return f"alias *{anchor} refers to a node that contains it"


def allowed_alias_ratio(decoded: int) -> float:
    """The share of decoded nodes that may come from alias expansion (yaml.v2 `allowedAliasRatio`)."""
    if decoded <= _ALIAS_RATIO_LOW:
        return 0.99
    if decoded >= _ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decoded - _ALIAS_RATIO_LOW) / (_ALIAS_RATIO_HIGH - _ALIAS_RATIO_LOW)


class Refused(Exception):
    """A document that costs more than it is worth; `mark` is where it was seen."""

    def __init__(self, why: str, mark):
        super().__init__(why)
        self.why = why
        self.mark = mark


class NeedsNodes(Exception):
    """The object builder met a tag it leaves to PyYAML's constructor."""


class _Bounds:
    """The counters of one document and the checks on them."""

    def start_document(self) -> None:
        self.depth = self.decoded = self.aliased = 0
        self.sizes = {}  # anchor -> nodes its node stands for, aliases inside it expanded

    def enter(self, event) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Refused(DEPTH_REFUSED, event.start_mark)

    def expand_alias(self, event) -> None:
        size = self.sizes.get(event.anchor)
        if size is None:
            raise Refused(cycle_refused(event.anchor), event.start_mark)
        self.decoded += size
        self.aliased += size
        if self.aliased > 100 and self.decoded > 1000 and \
                self.aliased / self.decoded > allowed_alias_ratio(self.decoded):
            raise Refused(ALIASES_REFUSED, event.start_mark)


_warned_pure_python = False
_classes: dict = {}


def _parser_bases() -> tuple:
    global _warned_pure_python
    import yaml

    if yaml.__with_libyaml__:
        from yaml._yaml import CParser

        return (CParser,)
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    if not _warned_pure_python:
        _warned_pure_python = True
        sys.stderr.write("selinux-mount-agent: warning: PyYAML was built without libyaml; YAML input is read "
                         "with its pure-Python parser, about 10x slower (JSON input is not affected)\n")
    return (Reader, Scanner, Parser)


def _init_parser(loader, bases: tuple, stream) -> None:
    bases[0].__init__(loader, stream)
    for base in bases[1:]:  # Scanner, Parser
        base.__init__(loader)


def object_builder_class():
    """The loader class that builds objects from events (see the module's docstring)."""
    import yaml

    key = ("builder", yaml.__with_libyaml__)
    if key in _classes:
        return _classes[key]
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError, SafeConstructor
    from yaml.events import (AliasEvent, MappingEndEvent, ScalarEvent, SequenceEndEvent, SequenceStartEvent,
                             StreamEndEvent)
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode
    from yaml.resolver import Resolver

    bases = _parser_bases()

    class ObjectBuilder(*bases, _Bounds, SafeConstructor, Resolver):
        def __init__(self, stream):
            _init_parser(self, bases, stream)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.plain_tags = {}  # the tag of each plain scalar spelling, as Resolver.resolve gives it
            # Called with each item of a top-level mapping's `items` list (a List dump) as it is built, to keep
            # it in a smaller form; `plain` says whether the item holds only what JSON can carry.
            self.item_hook = None
            self.plain = True
            self.hook_next_list = False

        def all_documents(self) -> list:
            documents = []
            self.get_event()  # stream start
            while not self.check_event(StreamEndEvent):
                self.get_event()  # document start
                self.start_document()
                self.objects = {}  # anchor -> the object built for it
                self.open = set()  # anchors of the collections being built
                value, tag = self.build()
                if tag == MERGE or tag == VALUE:
                    raise NeedsNodes
                documents.append(value)
                self.get_event()  # document end
            self.get_event()
            return documents

        def build(self):
            """(object, tag) of the next node, as Composer.compose_node and SafeConstructor would make it."""
            event = self.get_event()
            kind = event.__class__
            anchor = event.anchor
            if kind is AliasEvent:
                if anchor not in self.objects and anchor not in self.open:
                    raise ComposerError(None, None, f"found undefined alias {anchor!r}", event.start_mark)
                self.expand_alias(event)  # refuses an alias to an open collection
                return self.objects[anchor], None
            if anchor is not None and (anchor in self.objects or anchor in self.open):
                raise ComposerError(f"found duplicate anchor {anchor!r}; first occurrence", None,
                                    "second occurrence", event.start_mark)
            start = self.decoded
            self.decoded += 1
            tag = event.tag
            if kind is ScalarEvent:
                if tag is None or tag == "!":
                    implicit = event.implicit
                    if implicit[0]:
                        tag = self.plain_tags.get(event.value)
                        if tag is None:
                            if len(self.plain_tags) >= _PLAIN_TAGS_KEPT:  # names and uids never repeat: bound it
                                self.plain_tags.clear()
                            tag = self.plain_tags[event.value] = self.resolve(ScalarNode, event.value, implicit)
                    else:
                        tag = self.resolve(ScalarNode, event.value, implicit)
                if tag == STR or tag == MERGE or tag == VALUE:
                    value = event.value
                elif tag in DIRECT_SCALAR_TAGS:
                    value = self.yaml_constructors[tag](self, ScalarNode(tag, event.value, event.start_mark,
                                                                         event.end_mark, style=event.style))
                    if tag in _NOT_JSON or type(value) is float and value - value != 0:  # timestamp, binary, inf
                        self.plain = False
                else:
                    raise NeedsNodes
            else:
                self.enter(event)
                if anchor is not None:
                    self.open.add(anchor)
                if kind is SequenceStartEvent:
                    if tag is None or tag == "!":
                        tag = self.resolve(SequenceNode, None, event.implicit)
                    if tag != SEQ:
                        raise NeedsNodes
                    hooked, self.hook_next_list = self.hook_next_list, False
                    value = self.build_list(hooked)
                else:
                    if tag is None or tag == "!":
                        tag = self.resolve(MappingNode, None, event.implicit)
                    if tag != MAP:
                        raise NeedsNodes
                    value = self.build_dict(event)
                self.depth -= 1
                self.open.discard(anchor)
            if anchor is not None:
                self.objects[anchor] = value
                self.sizes[anchor] = self.decoded - start
            return value, tag

        def build_list(self, hooked: bool = False) -> list:
            items = []
            while not self.check_event(SequenceEndEvent):
                if hooked:
                    self.plain = True
                value, tag = self.build()
                if tag == MERGE or tag == VALUE:
                    raise NeedsNodes
                if hooked and self.plain:
                    value = self.item_hook(value)
                items.append(value)
            self.get_event()
            return items

        def build_dict(self, start) -> dict:
            data = {}
            merged = None  # pairs from `<<` keys, which the mapping's own keys override (flatten_mapping)
            while not self.check_event(MappingEndEvent):
                key, key_tag = self.build()
                if key_tag != STR:
                    self.plain = False  # JSON keys are strings
                elif key == "items" and self.depth == 1 and self.item_hook is not None:
                    self.hook_next_list = True  # the items of a top-level List
                value, value_tag = self.build()
                self.hook_next_list = False
                if value_tag == MERGE or value_tag == VALUE:
                    raise NeedsNodes
                if key_tag == MERGE:
                    merged = (merged or []) + self.merge_pairs(value, start)
                    continue
                if key_tag != STR and key_tag != VALUE and not isinstance(key, Hashable):
                    raise ConstructorError("while constructing a mapping", start.start_mark,
                                           "found unhashable key", start.start_mark)
                data[key] = value
            self.get_event()
            if merged is not None:
                data = dict(merged + list(data.items()))
            return data

        def merge_pairs(self, value, start) -> list:
            """What `<<: VALUE` adds, in SafeConstructor.flatten_mapping's order: a list's mappings last first,
            so that the first one wins."""
            if isinstance(value, dict):
                return list(value.items())
            if isinstance(value, list) and all(isinstance(item, dict) for item in value):
                return [pair for item in reversed(value) for pair in item.items()]
            raise ConstructorError("while constructing a mapping", start.start_mark,
                                   "expected a mapping or list of mappings for merging", start.start_mark)

    _classes[key] = ObjectBuilder
    return ObjectBuilder


def bounded_loader_class():
    """PyYAML's safe loader with the counting composer (see the module's docstring)."""
    import yaml

    key = ("loader", yaml.__with_libyaml__)
    if key in _classes:
        return _classes[key]
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.events import AliasEvent, ScalarEvent
    from yaml.resolver import Resolver

    bases = _parser_bases()

    class BoundedComposer(_Bounds, Composer):
        def compose_document(self):
            self.start_document()
            return super().compose_document()

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, AliasEvent):
                node = super().compose_node(parent, index)  # refuses an undefined anchor
                self.expand_alias(event)
                return node
            start = self.decoded
            self.decoded += 1
            if isinstance(event, ScalarEvent):
                node = super().compose_node(parent, index)
            else:
                self.enter(event)
                node = super().compose_node(parent, index)
                self.depth -= 1
            if event.anchor is not None:
                self.sizes[event.anchor] = self.decoded - start
            return node

    class BoundedLoader(*bases, BoundedComposer, SafeConstructor, Resolver):
        def __init__(self, stream):
            _init_parser(self, bases, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        # libyaml's parser brings its own composing methods; the counting ones come first.
        get_single_node = Composer.get_single_node
        check_node = Composer.check_node
        get_node = Composer.get_node
        compose_document = BoundedComposer.compose_document
        compose_node = BoundedComposer.compose_node
        compose_scalar_node = Composer.compose_scalar_node
        compose_sequence_node = Composer.compose_sequence_node
        compose_mapping_node = Composer.compose_mapping_node

        def all_documents(self) -> list:
            documents = []
            while self.check_data():
                documents.append(self.get_data())
            return documents

    _classes[key] = BoundedLoader
    return BoundedLoader
