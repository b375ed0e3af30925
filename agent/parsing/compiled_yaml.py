"""The compiled YAML reader: libyaml's events built into objects by agent/parsing/_yaml.c, read as
`yaml.safe_load_all` reads them, within the bounds of agent/parsing/bounded_yaml.py.

The C layer walks events and builds dicts and lists; what a scalar means is decided here, by PyYAML's own
Resolver and SafeConstructor (only for the plain scalars that may be something other than a string, and for
explicitly tagged ones), and every refusal's words come from bounded_yaml. Where the safe loader would do something
this reader does not (tags it leaves to nodes, undefined or duplicate anchors, unhashable keys, bad merges), it
raises NeedsNodes and the caller reads the text again through PyYAML's composer, which gives PyYAML's result or
error.
"""

from __future__ import annotations

from agent.parsing.bounded_yaml import (ALIASES_REFUSED, DEPTH_REFUSED, DIRECT_SCALAR_TAGS, MAX_DEPTH, STR, NeedsNodes,
                                        Refused, cycle_refused)

try:
    from agent.parsing import _yaml
except ImportError:  # built without libyaml's headers (a pip install without libyaml-dev)
    _yaml = None

# The `refuse` codes of _yaml.c.
_DEPTH, _ALIASES, _CYCLE = 1, 2, 3
# libyaml's yaml_error_type_t values that PyYAML's CParser turns into its own errors.
_READER_ERROR, _SCANNER_ERROR = 2, 3


def available() -> bool:
    """Whether the extension was built."""
    return _yaml is not None


class _Scalars:
    """PyYAML's resolution and construction of one scalar at a time, as the C layer asks for them."""

    def __init__(self):
        from yaml.constructor import ConstructorError, SafeConstructor
        from yaml.error import Mark
        from yaml.nodes import ScalarNode
        from yaml.resolver import Resolver

        self.resolver = Resolver()
        self.constructor = SafeConstructor()
        self.node, self.mark, self.error = ScalarNode, Mark, ConstructorError

    def plain(self, value: str):
        """A plain, untagged scalar that may resolve to a number, a timestamp or the `yaml` tag."""
        tag = self.resolver.resolve(self.node, value, (True, False))
        if tag == STR:
            return value
        return self.tagged(tag, value)

    def tagged(self, tag: str, value: str, line: int | None = None, column: int | None = None):
        if tag not in DIRECT_SCALAR_TAGS:
            raise NeedsNodes
        mark = None if line is None else self.mark(None, None, line, column, None, None)
        try:
            return self.constructor.yaml_constructors[tag](self.constructor, self.node(tag, value, mark, mark))
        except (KeyError, AttributeError, TypeError, IndexError):
            # `!!bool nope`, `!!timestamp x`, `!!int ''`: PyYAML's constructors fail with these, not a YAMLError
            raise self.error(None, None, f"{value[:50]!r} is not a {tag.rsplit(':', 1)[-1]}", mark) from None

    def refuse(self, code: int, line: int, column: int, anchor: str | None) -> Refused:
        why = DEPTH_REFUSED if code == _DEPTH else ALIASES_REFUSED if code == _ALIASES else cycle_refused(anchor)
        return Refused(why, self.mark(None, None, line, column, None, None))

    def syntax_error(self, kind: int, context, context_mark, problem, problem_mark, offset: int, value: int):
        """The error PyYAML's CParser raises for what libyaml's parser reports."""
        from yaml.parser import ParserError
        from yaml.reader import ReaderError
        from yaml.scanner import ScannerError

        if kind == _READER_ERROR:
            return ReaderError("<input>", offset, value, "?", problem)
        marks = [None if mark is None else self.mark(None, None, mark[0], mark[1], None, None)
                 for mark in (context_mark, problem_mark)]
        return (ScannerError if kind == _SCANNER_ERROR else ParserError)(context, marks[0], problem, marks[1])


def load_all(source, item_hook=None) -> list:
    """Every document of `source` (str, bytes, or a file opened for reading); `item_hook` as in
    bounded.load_yaml_documents. Raises NeedsNodes, Refused, PyYAML's errors, or ValueError (an integer
    longer than Python converts)."""
    scalars = _Scalars()
    return _yaml.load_all(source, scalars.plain, scalars.tagged, scalars.refuse, NeedsNodes, scalars.syntax_error,
                          item_hook, MAX_DEPTH)
