"""agent/parsing/compiled_yaml.py and _yaml.c: every document read as `yaml.safe_load_all` reads it, the bounds
refused with bounded_yaml's words, and what the compiled reader leaves to PyYAML's nodes handed back."""

import datetime
import re
import io
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import InvalidManifest
from agent.parsing import bounded, compiled_yaml
from agent.parsing.bounded import load_yaml_documents
from agent.parsing.bounded_yaml import MAX_DEPTH, NeedsNodes, Refused

pytestmark = pytest.mark.skipif(not compiled_yaml.available(),
                                reason="agent.parsing._yaml is not built (libyaml-dev was missing at install)")


def test_the_extension_is_built_where_libyaml_headers_are_installed():
    if not Path("/usr/include/yaml.h").exists():
        pytest.skip("no /usr/include/yaml.h: the extension is optional without libyaml-dev")
    assert compiled_yaml.available()


def canon(value):
    """A form in which equal means the same types and values: True is not 1, 1 is not 1.0, NaN equals NaN."""
    if isinstance(value, dict):
        return ("dict", [(canon(k), canon(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [canon(item) for item in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    if isinstance(value, (set, tuple)):
        return (type(value).__name__, sorted(map(repr, value)) if isinstance(value, set) else [canon(v) for v in value])
    return (type(value).__name__, value)


def safe(text):
    """What PyYAML's safe loader gives, or "error". Where its pure-Python parser and libyaml's parser read a text
    differently (a few corners: an empty node tagged `!`), libyaml's reading (yaml.CSafeLoader) is the one the
    compiled reader gives; PARSERS_DIFFER gathers the texts met."""
    python, libyaml = _loaded(text, yaml.SafeLoader), _loaded(text, yaml.CSafeLoader)
    if python != libyaml:
        PARSERS_DIFFER.add(text)
    return libyaml


PARSERS_DIFFER = set()


def _loaded(text, loader):
    try:
        return canon(list(yaml.load_all(text, Loader=loader)))
    except Exception:  # YAMLError; ValueError (a number too long for int()); KeyError, AttributeError (`!!bool x`)
        return "error"


def compiled(text, source=None):
    """What the compiled reader gives, with no fallback, or "error" for an error; None when it hands over."""
    try:
        return canon(compiled_yaml.load_all(text if source is None else source))
    except NeedsNodes:
        return None
    except Exception:
        return "error"


def loaded(text):
    try:
        return canon(load_yaml_documents(text, "f"))
    except InvalidManifest:
        return "error"


def assert_same(text, handed_over_allowed=False):
    expected = safe(text)
    direct = compiled(text)
    if direct is None:
        assert handed_over_allowed, f"the compiled reader handed over {text!r}"
    else:
        assert direct == expected, text
    assert loaded(text) == expected, text


# Every plain-scalar spelling PyYAML's YAML 1.1 resolver tells apart, and near misses.
SCALARS = [
    "", "~", "null", "Null", "NULL", "nULL", "nul", "none", "yes", "Yes", "YES", "yEs", "no", "No", "NO", "on",
    "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N", "true", "True", "TRUE", "tRUE", "false", "False", "FALSE",
    "0", "00", "007", "08", "0o14", "0o18", "0b1010", "0b102", "0x1F", "0x1f", "-0x1F", "0xG", "+12", "-12", "-0",
    "+0", "1_000", "1__0", "_1", "0_", "1,000", "190:20:30", "-190:20:30", "190:20:30.15", "1:60", "1:2:3:4",
    "1e3", "1E3", "1.0e+3", "1.0e3", "6.8523015e+5", "685.230_15e+03", "685_230.15", "-1.5", "+.5", ".5", "1.",
    "0.", "-.", ".", "+", "-", ".inf", ".Inf", ".INF", "-.inf", "+.inf", ".iNf", ".nan", ".NaN", ".NAN", ".nAn",
    "1.2.3", "3.14.15", "e3", "1e", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5",
    "2001-12-14T21:59:43Z", "2001-12-15 2:59:43.10", "2002-1-1", "2002-13-01", "2001-12-14 25:00:00",
    "12345678901234567", "123456789012345678", "1234567890123456789", "99999999999999999999999", "<<", "<", "<<<",
    "=", "==", "=x", "!", "&", "*", "ünïcode", "日本", "x y z", "a:b", "a#b", "http://x/y?z=1", "@", "`",
    "1 2", "-1-", "0777", "0o777", "+0x1", "0b", "0x", "0o", "1e2feb89-414c-443c-9027-c4d1c386bbc4",
    "12345678-1234-1234-1234-123456789012", "１２", "٣", "1e+3", "1.5e3", "2001-12-14 21:59:43.10 +05:30",
]


def as_key(spelling):
    return spelling if spelling else '""'


@pytest.mark.parametrize("spelling", SCALARS)
def test_each_plain_scalar_reads_as_the_safe_loader_reads_it(spelling):
    for text in (f"v: {spelling}\n", f"- {spelling}\n", f"[{spelling}]\n", f"{spelling}\n",
                 f"{spelling}: k\n", f"'{spelling}': q\n", f'v: "{spelling}"\n', f"v: !!str {spelling}\n"):
        assert_same(text, handed_over_allowed=spelling in ("<<", "=", "!", "&", "*") or
                    spelling in ("", "-", "1 2") or "#" in spelling)


@pytest.mark.parametrize("tag, spelling", [
    ("int", "12"), ("int", "0x1f"), ("int", "1_0"), ("int", "abc"), ("float", "1"), ("float", ".inf"),
    ("float", "x"), ("bool", "yes"), ("bool", "nope"), ("null", "~"), ("null", ""), ("binary", "aGVsbG8="),
    ("binary", "@@@"), ("timestamp", "2001-12-14"), ("timestamp", "2001-12-14 21:59:43.10 -5"), ("timestamp", "x"),
    ("str", "12"), ("str", "yes"), ("int", ""), ("float", ""), ("bool", ""), ("timestamp", ""), ("binary", ""),
])
def test_explicit_tags_read_as_the_safe_loader_reads_them(tag, spelling):
    assert_same(f"a: !!{tag} {spelling}\nb: !!{tag} '{spelling}'\n")


@pytest.mark.parametrize("text", [
    "tags: !!set {a, b}\n", "o: !!omap [{a: 1}, {b: 2}]\n", "p: !!pairs [{a: 1}, {a: 2}]\n", "x: !local 1\n",
    "x: ! 12\n", "x: !!python/name:os.system\n", "a: *nowhere\n", "a: &x 1\nb: &x 2\n", "? [1]\n: v\n",
    "? {a: 1}\n: v\n", "a: {<<: 1}\n", "a: {<<: [1]}\n", "a: <<\n", "- =\n", "a: &m <<\n", "=\n", "x: !!merge <<\n",
    "a: !!map [1]\n", "a: !!seq {b: 1}\n",
])
def test_what_the_compiled_reader_hands_over_reads_as_pyyaml_reads_it(text):
    assert_same(text, handed_over_allowed=True)


KUBECTL_LIST = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"name":"web-0"}}
    creationTimestamp: "2024-05-01T10:00:00Z"
    generateName: web-
    labels:
      app: web
      controller-revision-hash: web-6d4cf56db6
      statefulset.kubernetes.io/pod-name: web-0
    name: web-0
    namespace: default
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: StatefulSet
      name: web
      uid: 0b7c4c1e-3f1e-4f54-9a3b-6f0e6c8f4d2a
    resourceVersion: "123456"
    uid: 5e0a9e52-8f0d-4e6e-bb7a-1c2d3e4f5a6b
  spec:
    containers:
    - args: ["--port=8080", --verbose]
      image: registry.k8s.io/nginx:1.25
      imagePullPolicy: IfNotPresent
      name: web
      ports:
      - containerPort: 8080
        protocol: TCP
      resources:
        limits: {cpu: 500m, memory: 128Mi}
        requests:
          cpu: "0.25"
          memory: 64Mi
      securityContext:
        seLinuxOptions: {level: "s0:c123,c456", type: spc_t}
        runAsUser: 1000
        readOnlyRootFilesystem: false
      volumeMounts:
      - mountPath: /data
        name: data
    securityContext:
      fsGroup: 2000
      seLinuxChangePolicy: MountOption
    terminationGracePeriodSeconds: 30
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
    volumes:
    - name: data
      persistentVolumeClaim:
        claimName: data-web-0
    - configMap:
        defaultMode: 420
        name: conf
      name: conf
  status:
    phase: Running
    podIP: 10.244.0.12
    startTime: "2024-05-01T10:00:01Z"
    conditions: []
- apiVersion: v1
  kind: PersistentVolume
  metadata: {name: pv-1, uid: 11111111-2222-3333-4444-555555555555}
  spec:
    accessModes: [ReadWriteOncePod]
    capacity: {storage: 1Gi}
    csi: {driver: hostpath.csi.k8s.io, volumeHandle: "0001"}
    mountOptions: []
kind: List
metadata:
  resourceVersion: ""
"""

HAND_WRITTEN = {
    "kubectl list": KUBECTL_LIST,
    "anchors and aliases": "a: &x {b: [1, &y 2]}\nc: *x\nd: *y\ne: &z [*x, *y]\nf: [*z, *z]\n",
    "merges": "base: &b {image: app, env: [1]}\nmore: &m {port: 80, image: other}\n"
              "one: {<<: *b, image: mine}\nlist: {<<: [*b, *m], port: 81}\nrev: {<<: [*m, *b]}\n"
              "two: {<<: *b, <<: *m}\nnested: &n {<<: *b, x: 1}\nagain: {<<: *n, y: 2}\nempty: {<<: []}\n"
              "inline: {<<: {a: 1, b: 2}, b: 3}\nblock:\n  <<: *b\n  image: blocky\n",
    "multi-document": "---\na: 1\n...\n---\n- 2\n---\n\n--- 'three'\n--- |\n  four\n---\n",
    "empty": "",
    "only comments": "# nothing\n  # at all\n",
    "null document": "null\n",
    "comments": "# head\na: 1 # one\n# middle\nb: [2, # two\n 3]\n",
    "flow style": "{a: [1, {b: c}, [d, e]], 'f': \"g\", ? h : i, j: }\n",
    "block scalars": "a: |\n  one\n  two\nb: >\n  folded\n  text\n\n  para\nc: |-\n  strip\nd: |+\n  keep\n\ne: >2\n   indented\n",
    "quoted": "a: 'it''s'\nb: \"tab\\there \\u263A \\x41 \\0 \\N\"\nc: \"multi\n  line\"\nd: 'multi\n\n  para'\n",
    "plain multi-line": "a: one\n  two\n\n  three\nb: - x\n",
    "unicode": "ключ: значение\n日本: [語, 😀]\n\"\\U0001F600\": emoji\nbom: \ufeffnot\n",
    "duplicate keys": "a: 1\nb: 2\na: 3\n? a\n: 4\nm: {x: 1, x: 2}\n",
    "keys of every kind": "1: int\n1.5: float\ntrue: bool\n~: null\n2024-01-02: date\n"
                          "2024-01-02 10:00:00: time\n0x10: hex\n\"1\": str\n",
    "equal keys of other types": "1: int\ntrue: bool\n1.0: float\n",
    "value key": "{=: default, other: 1}\n",
    "tabs and crlf": "a:\tb\r\nc: [1,\t2]\r\n",
    "explicit document end": "a: 1\n...\n# comment\n---\nb: 2\n...\n",
    "directives": "%YAML 1.1\n%TAG !e! tag:example.com,2000:\n---\na: !!str 1\n",
    "long string": "a: " + "x" * 100_000 + "\n",
    "anchored scalars": "a: &s 12\nb: *s\nc: &t yes\nd: [*t, *s]\n",
    "alias as key": "a: &k key\n*k : value\n",
    "deep but allowed": "a:" + "".join(f"\n{'  ' * level}b{level}:" for level in range(1, 200)) + " x\n",
    "syntax error": "a: [1, 2\nb: 3\n",
    "scanner error": "a: 'unterminated\n",
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "tab indentation": "a:\n\tb: 1\n",
    "control character": "a: \x07\n",
    "error in second document": "a: 1\n---\n[\n",
}


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_hand_written_yaml_reads_as_the_safe_loader_reads_it(name):
    assert_same(HAND_WRITTEN[name], handed_over_allowed=name in ("alias as key",))


def test_the_projects_fixture_dumps_read_without_handing_over():
    root = Path(__file__).resolve().parents[3]
    for path in sorted(root.joinpath("tests", "fixtures").rglob("*.y*ml")) + sorted(root.joinpath("examples").rglob("*.y*ml")):
        text = path.read_text()
        assert compiled(text) == safe(text), path


@pytest.mark.parametrize("make", [str, lambda t: t.encode(), lambda t: t.encode("utf-16"),
                                  lambda t: io.BytesIO(t.encode()), io.StringIO],
                         ids=["str", "utf-8 bytes", "utf-16 bytes", "binary file", "text file"])
def test_every_input_form_reads_alike(make):
    text = KUBECTL_LIST + "---\nänother: 'ü' \n" + "pad: " + "é" * 70_000 + "\n"  # crosses libyaml's read chunks
    assert canon(compiled_yaml.load_all(make(text))) == safe(text)


def test_an_alias_is_the_same_object_as_its_anchor():
    document = compiled_yaml.load_all("a: &x {b: [1]}\nc: *x\nd: &y [*x]\ne: *y\n")[0]
    assert document["a"] is document["c"] and document["d"] is document["e"] and document["d"][0] is document["a"]


def test_list_items_go_to_the_hook_unless_json_cannot_carry_them():
    text = ("kind: List\nitems:\n- {a: 1, b: [x, 2.5, true, ~]}\n- {t: 2024-01-02}\n- {1: one}\n- {f: .inf}\n"
            "- {b: !!binary aGk=}\n- plain\n- [1]\nother: [{not: hooked}]\nnested: {items: [{no: hook}]}\n")
    seen = []

    def hook(item):
        seen.append(item)
        return ("kept", len(seen))

    document = compiled_yaml.load_all(text, hook)[0]
    assert seen == [{"a": 1, "b": ["x", 2.5, True, None]}, "plain", [1]]
    assert document["items"][0] == ("kept", 1) and document["items"][1] == {"t": datetime.date(2024, 1, 2)}
    assert document["items"][5:] == [("kept", 2), ("kept", 3)] and document["other"] == [{"not": "hooked"}]
    assert compiled_yaml.load_all("x: &l [{a: 1}]\nitems: *l\n", hook)[0]["items"] == [{"a": 1}]  # not a list's text
    # An item that aliases or merges a node holding a timestamp is not plain either, wherever that node is.
    seen.clear()
    text = ("t: &t {when: 2024-01-02}\nn: &n {x: [1, &d 2024-01-03]}\nitems:\n- {a: *t}\n- {<<: *t}\n- {b: *d}\n"
            "- {c: *n}\n- &i {fine: [1]}\n- {again: *i}\n- &j {nested: &k {z: 2024-01-04}}\n- {k: *k}\n- {j: *j}\n")
    compiled_yaml.load_all(text, hook)
    assert seen == [{"fine": [1]}, {"again": {"fine": [1]}}]


# Generated documents: nested flow and block collections of the spellings above, with anchors, aliases and merges.
@st.composite
def documents(draw, depth=0, anchors=None):
    anchors = [] if anchors is None else anchors
    choice = draw(st.integers(0, 9 if depth < 4 else 4))
    if choice <= 2:
        node = draw(st.sampled_from([s for s in SCALARS if s and s not in ("-", "!", "&", "*", "1 2") and "#" not in s]))
        quote = draw(st.sampled_from(["", "", "'", '"']))
        node = f"{quote}{node}{quote}"
    elif choice == 3 and anchors:
        return "*" + draw(st.sampled_from(anchors))
    elif choice == 4:
        node = repr(draw(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)))
        node = '"' + node[1:-1].replace('"', '\\"') + '"' if node.startswith("'") else node
    elif choice <= 6:
        node = "[" + ", ".join(draw(st.lists(documents(depth + 1, anchors), max_size=4))) + "]"
    else:
        keys = draw(st.lists(st.sampled_from(["a", "b", "name", "1", "yes", "~", "'q'", "0x1"]), max_size=4))
        pairs = [f"{key}: {draw(documents(depth + 1, anchors))}" for key in keys]
        mappings = [a for a in anchors if a.startswith("m")]
        if mappings and draw(st.booleans()):
            pairs.insert(draw(st.integers(0, len(pairs))), "<<: " + (
                "*" + draw(st.sampled_from(mappings)) if draw(st.booleans())
                else "[" + ", ".join("*" + a for a in draw(st.lists(st.sampled_from(mappings), max_size=3))) + "]"))
        node = "{" + ", ".join(pairs) + "}"
    if draw(st.integers(0, 3)) == 0:
        name = ("m" if node.startswith("{") else "n") + str(len(anchors))
        node = f"&{name} {node}"
        anchors.append(name)
    return node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents(), min_size=1, max_size=3), st.booleans())
def test_generated_documents_read_as_the_safe_loader_reads_them(texts, block):
    text = "".join(f"--- {t}\n" for t in texts)
    assert_same(text, handed_over_allowed=True)
    if block:  # the same data in block style, as kubectl writes it
        try:
            data = list(yaml.safe_load_all(text))
            again = yaml.safe_dump_all(data, default_flow_style=False, allow_unicode=True, sort_keys=False)
        except (yaml.YAMLError, ValueError, TypeError):
            return
        assert_same(again)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) |
                    st.dates() | st.datetimes() | st.binary(max_size=6),
                    lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4), max_leaves=25),
       st.sampled_from([None, "'", '"', "|"]), st.booleans())
def test_what_pyyaml_writes_reads_as_it_reads_it(data, style, flow):
    text = yaml.safe_dump(data, default_style=style, default_flow_style=flow, allow_unicode=True)
    assert_same(text)


# The bounds: each refused as bounded_yaml refuses it, with the mark.
def nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("text, words, line", [
    (nested(MAX_DEPTH + 1), f"objects and lists nested more than {MAX_DEPTH:,} levels deep", 1),
    ("items: " + nested(200_000) + "\n", "nested more than", 1),
    ("".join("  " * level + "a:\n" for level in range(1_200)), "nested more than", 1001),
    ("&a [*a]", "alias *a refers to a node that contains it", 1),
    ("&list {kind: List, apiVersion: v1, items: [*list]}\n", "alias *list refers to a node that contains it", 1),
    ("base: &b [" + ",".join(["x"] * 200) + "]\nall: [" + ",".join(["*b"] * 200) + "]\n",
     "the document expands its aliases", 2),
])
def test_bounds_are_refused_with_the_words_and_mark(text, words, line):
    with pytest.raises(Refused) as caught:
        compiled_yaml.load_all(text)
    assert words in caught.value.why and caught.value.mark.line + 1 == line
    with pytest.raises(InvalidManifest, match=f"^f: refused: .*{re.escape(words[:20])}.* at line {line} column"):
        load_yaml_documents(text, "f")


def test_depth_limit_is_exact():
    document = compiled_yaml.load_all(nested(MAX_DEPTH))[0]
    for _ in range(MAX_DEPTH - 1):
        document, = document
    assert document == []
    with pytest.raises(Refused):
        compiled_yaml.load_all(nested(MAX_DEPTH + 1))


def test_the_refusals_are_the_python_readers():
    """The compiled reader and the Python one refuse the same inputs at the same place."""
    from agent.parsing.bounded_yaml import object_builder_class

    texts = ["&a [*a]", nested(MAX_DEPTH + 1),
             "base: &b [" + ",".join(["x"] * 200) + "]\nall: [" + ",".join(["*b"] * 200) + "]\n",
             "a: &a [" + ",".join(["x"] * 9) + "]\n" + "".join(
                 f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi"))]
    for text in texts:
        with pytest.raises(Refused) as python:
            bounded._on_a_fresh_stack(bounded._YAML_FRAMES, bounded._read_all, object_builder_class(), text)
        with pytest.raises(Refused) as compiled_error:
            compiled_yaml.load_all(text)
        assert (compiled_error.value.why, compiled_error.value.mark.line, compiled_error.value.mark.column) == \
            (python.value.why, python.value.mark.line, python.value.mark.column)


def test_a_long_integer_is_one_line():
    with pytest.raises(InvalidManifest, match="^f: a number has more than 4,300 digits$"):
        load_yaml_documents("kind: List\nitems:\n- {n: " + "7" * 5000 + "}\n", "f")


def test_syntax_errors_have_pyyamls_words_and_marks():
    for text in ("a: [1, 2\nb: 3\n", "a: 'x\n", "a:\n  b: 1\n c: 2\n", "a: \x07\n", "- a\nb: c\n"):
        try:
            list(yaml.load_all(text, Loader=yaml.CSafeLoader))  # libyaml's words, as the reader's parser is libyaml
        except yaml.YAMLError as err:
            expected = err
        with pytest.raises(yaml.YAMLError) as caught:
            compiled_yaml.load_all(text)
        assert type(caught.value) is type(expected)
        assert str(caught.value).splitlines()[0] == str(expected).splitlines()[0]
        mark = getattr(expected, "problem_mark", None)
        if mark is not None:
            assert (caught.value.problem_mark.line, caught.value.problem_mark.column) == (mark.line, mark.column)


def test_without_the_extension_one_line_says_so_and_python_reads(monkeypatch, capsys):
    monkeypatch.setattr(compiled_yaml, "_yaml", None)
    monkeypatch.setattr(bounded, "_warned_not_compiled", False)
    for _ in range(2):
        assert canon(load_yaml_documents(KUBECTL_LIST, "f")) == safe(KUBECTL_LIST)
    warning = capsys.readouterr().err
    assert len(warning.splitlines()) == 1 and "compiled YAML reader" in warning and "libyaml-dev" in warning


def test_the_hostile_yaml_files_are_refused_with_their_words():
    from hostile_inputs import HOSTILE, REFUSED

    for name, text in HOSTILE.items():
        if name.endswith(".yaml") and "volume-without-name" not in name:  # those two are valid YAML
            with pytest.raises(InvalidManifest) as caught:
                load_yaml_documents(text, name)
            assert REFUSED[name] in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_handed_over_is_read_again_from_its_start():
    text = KUBECTL_LIST + "---\ntags: !!set {a, b}\n"
    assert canon(load_yaml_documents(io.BytesIO(text.encode()), "f")) == safe(text)


def test_past_the_kept_spellings_and_strings_every_value_is_still_its_own():
    # More distinct numbers than the spelling cache keeps, more distinct short strings than the string table has
    # slots (so slots are taken over), each met again after the cache was cleared.
    numbers = [f"0x{i:x}" for i in range(6000)] + [f"{i}.5" for i in range(6000)]
    strings = [f"k{i}" for i in range(20000)]
    text = "n: [" + ", ".join(numbers * 2) + "]\ns: [" + ", ".join(strings + strings[::-1]) + "]\n" + \
        "".join(f"{key}: {key}x\n" for key in strings[:9000])
    assert compiled(text) == safe(text)


@pytest.mark.parametrize("make", [str, io.StringIO, lambda t: t.encode(), lambda t: io.BytesIO(t.encode())],
                         ids=["str", "text file", "utf-8 bytes", "binary file"])
@pytest.mark.parametrize("text", ["\ufeff%YAML 1.1\n---\nv: 0\n", "\ufeffr:v: tRUE\n tR?\n", "\ufeff- a\n- b\n"],
                         ids=["directive", "continued plain scalar", "sequence"])
def test_a_leading_byte_order_mark_is_skipped_in_every_input_form(make, text):
    # A text read in text mode keeps its BOM as U+FEFF; libyaml skips it only when it detects the encoding itself.
    assert canon(compiled_yaml.load_all(make(text))) == safe(text) == canon(list(yaml.safe_load_all(text)))
