"""agent/parsing/bounded.py: the same objects PyYAML's safe loader and json give, within the bounds."""

import json
from pathlib import Path

import pytest
import yaml

from agent.parsing import bounded, bounded_yaml, compiled_yaml
from agent.parsing.bounded import load_json, load_yaml_documents
from agent.parsing.bounded_yaml import MAX_DEPTH, NeedsNodes, allowed_alias_ratio, bounded_loader_class, object_builder_class
from agent.errors import InvalidManifest

ORDINARY = """\
defaults: &defaults {image: app:1, env: [{name: A, value: "1"}], ports: [80, 443]}
web: {<<: *defaults, replicas: 3, on: yes, ratio: 0.5, when: 2024-01-02, empty: ~, tags: !!set {a, b}}
again: *defaults
name: &name web-0
names: [*name, *name]
1: int key
true: bool key
~: null key
2024-01-02 10:00:00: time key
dup: first
dup: last
text: |
  two
  lines
folded: >-
  one
  line
explicit: !!str 123
binary: !!binary aGVsbG8=
ordered: !!omap [{a: 1}, {b: 2}]
pairs: !!pairs [{a: 1}, {a: 2}]
value: {=: default, other: 1}
floats: [.inf, -.Inf, 1e3, 6.8523015e+5, 190:20:30.15]
ints: [0o14, 0b1010, 1_000, -0x1F, 190:20:30]
merged: {<<: [*defaults, {image: other}], replicas: 1}
---
- plain
- 'quoted'
- 0x1f
- null
- !!float 1
"""


@pytest.mark.parametrize("reader", ["compiled", "python on libyaml", "python"])
def test_ordinary_yaml_reads_as_the_safe_loader_reads_it(monkeypatch, capsys, reader):
    monkeypatch.setattr(bounded_yaml, "_warned_pure_python", False)
    monkeypatch.setattr(bounded, "_warned_not_compiled", False)
    if reader == "compiled" and not compiled_yaml.available():
        pytest.skip("agent.parsing._yaml is not built (libyaml-dev was missing at install)")
    if reader != "compiled":
        monkeypatch.setattr(compiled_yaml, "_yaml", None)
    monkeypatch.setattr(yaml, "__with_libyaml__", reader != "python")
    for _ in range(2):
        assert load_yaml_documents(ORDINARY, "f") == list(yaml.safe_load_all(ORDINARY))
    warnings = capsys.readouterr().err.splitlines()
    # Each said once, on one line.
    assert ("compiled YAML reader" in "".join(warnings)) == (reader != "compiled")
    assert ("without libyaml" in "".join(warnings)) == (reader == "python")
    assert len(warnings) == {"compiled": 0, "python on libyaml": 1, "python": 2}[reader]


@pytest.mark.parametrize("text", [ORDINARY, "a: {b: [1, 2.5, yes, ~, 2024-01-02, !!binary aGk=]}\n", "- x\n"])
def test_both_loaders_read_what_the_safe_loader_reads(text):
    # The builder hands tags it does not build to the node loader; where it builds, both agree with PyYAML.
    expected = list(yaml.safe_load_all(text))
    loader = bounded_loader_class()(text)
    assert loader.all_documents() == expected
    try:
        built = object_builder_class()(text).all_documents()
    except NeedsNodes:
        assert "!!set" in text or "!!omap" in text or "!!pairs" in text
    else:
        assert built == expected


def test_an_alias_is_the_same_object_as_its_anchor():
    document = load_yaml_documents("a: &x {b: [1]}\nc: *x\nd: &y [*x]\ne: *y\n", "f")[0]
    assert document["a"] is document["c"] and document["d"] is document["e"] and document["d"][0] is document["a"]


def test_an_unhashable_key_is_refused_as_pyyaml_refuses_it():
    text = "? {a: 1}\n: v\n"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    with pytest.raises(InvalidManifest, match="f: invalid YAML at line 1 column [0-9]+: found unhashable key"):
        load_yaml_documents(text, "f")


def test_libyaml_parses_when_present():
    assert yaml.__with_libyaml__, "the installed PyYAML has libyaml; the test of speed depends on it"
    from yaml._yaml import CParser

    assert issubclass(object_builder_class(), CParser) and issubclass(bounded_loader_class(), CParser)


@pytest.mark.parametrize("load, text", [
    (load_json, "[{}]"), (load_yaml_documents, "[{}]"), (load_yaml_documents, "a:\n  b:\n    - {}\n"),
])
def test_depth_limit_is_exact(load, text):
    def nested(depth):
        return "[" * depth + "]" * depth

    load(nested(MAX_DEPTH), "f")
    with pytest.raises(InvalidManifest, match=f"f: refused: objects and lists nested more than 1,000 levels"):
        load(nested(MAX_DEPTH + 1), "f")
    load(text, "f")


def test_json_reads_as_json_reads():
    text = json.dumps({"kind": "List", "items": [{"a": [1, 2.5, None, True, "x" * 100]}]})
    assert load_json(text, "f") == json.loads(text)


def test_alias_ratio_is_yaml_v2s():
    assert allowed_alias_ratio(1000) == 0.99
    assert allowed_alias_ratio(4_000_000) == 0.10
    assert allowed_alias_ratio(2_200_000) == pytest.approx(0.545)


def test_many_small_aliases_within_the_ratio_are_read():
    # 500 aliases of a 3-node mapping next to 2,000 written nodes: 1,500 of 3,500 decoded nodes from aliases.
    text = "base: &b {x: 1}\n" + "".join(f"k{i}: *b\n" for i in range(500)) + \
        "".join(f"w{i}: v\n" for i in range(1000))
    document = load_yaml_documents(text, "f")[0]
    assert document["k499"] == {"x": 1}


def test_aliases_past_the_ratio_are_refused_at_the_alias():
    # 200 aliases of a 201-node list: 40,200 of 40,400-odd decoded nodes from aliases, past yaml.v2's 99%.
    text = "base: &b [" + ",".join(["x"] * 200) + "]\nall: [" + ",".join(["*b"] * 200) + "]\n"
    with pytest.raises(InvalidManifest, match=r"f: refused: the document expands its aliases .* at line 2"):
        load_yaml_documents(text, "f")


@pytest.mark.parametrize("text, words", [
    ("&a [*a]", "alias *a refers to a node that contains it"),
    ("a: *nowhere", "invalid YAML at line 1 column 4: found undefined alias 'nowhere'"),
    ("n: " + "1" * 5000, "a number has more than 4,300 digits"),
    ("{a: [}", "invalid YAML at line 1"),
])
def test_bad_yaml_is_one_line(text, words):
    with pytest.raises(InvalidManifest, match=None) as caught:
        load_yaml_documents(text, "f")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_long_integer_in_json_is_one_line():
    with pytest.raises(InvalidManifest, match="^f: a number has more than 4,300 digits$"):
        load_json('{"n": ' + "7" * 5000 + "}", "f")


REPO = Path(__file__).resolve().parents[3]
REPO_YAML = sorted(p for folder in ("examples", "deploy", "tests/fixtures") for p in (REPO / folder).rglob("*.y*ml"))


@pytest.mark.parametrize("path", REPO_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_the_projects_own_yaml_reads_as_the_safe_loader_reads_it(path):
    text = path.read_text()
    assert load_yaml_documents(text, str(path)) == list(yaml.safe_load_all(text))
