"""agent/label.py: grammar, canonical MCS form, validation errors, and the context= mount option."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import InvalidLabel
from agent.label import (Label, Level, canonical_level, context_mount_option, go_quote, parse_context_option)
from agent.node.mountinfo import split_options


@pytest.mark.parametrize("text, canonical", [
    ("system_u:object_r:container_file_t:s0", "system_u:object_r:container_file_t:s0"),
    ("system_u:object_r:container_file_t:s0:c1,c2", "system_u:object_r:container_file_t:s0:c1,c2"),
    ("system_u:object_r:container_file_t:s0:c2,c1", "system_u:object_r:container_file_t:s0:c1,c2"),
    ("u:r:t:s0:c1,c1", "u:r:t:s0:c1"),
    ("u:r:t:s0:c1,c2,c3", "u:r:t:s0:c1.c3"),
    ("u:r:t:s0:c3,c1,c2,c7", "u:r:t:s0:c1.c3,c7"),
    ("u:r:t:s0:c0.c2,c4,c5", "u:r:t:s0:c0.c2,c4,c5"),
    ("u:r:t:s0:c0.c1", "u:r:t:s0:c0,c1"),
    ("u:r:t:s0-s0", "u:r:t:s0"),
    ("u:r:t:s0:c1,c2-s0:c1,c2", "u:r:t:s0:c1,c2"),
    ("u:r:t:s0-s0:c0.c1023", "u:r:t:s0-s0:c0.c1023"),
    ("u:r:t:s0-s15:c0.c1023", "u:r:t:s0-s15:c0.c1023"),
    ("unconfined_u:unconfined_r:unconfined_t", "unconfined_u:unconfined_r:unconfined_t"),
])
def test_canonical_form_matches_the_kernel(text, canonical):
    label = Label.parse(text)
    assert label.canonical == canonical
    assert label.text == text
    assert Label.parse(canonical) == label
    assert hash(Label.parse(canonical)) == hash(label)


def test_equality_ignores_spelling_but_not_meaning():
    assert Label.parse("u:r:t:s0:c2,c1") == Label.parse("u:r:t:s0:c1,c2")
    assert Label.parse("u:r:t:s0:c1.c3") == Label.parse("u:r:t:s0:c1,c2,c3")
    # A range whose low level has no categories is not the same as the flat level.
    assert Label.parse("u:r:t:s0-s0:c1,c2") != Label.parse("u:r:t:s0:c1,c2")
    assert Label.parse("u:r:t:s0:c1,c2") != Label.parse("u:r:t:s0:c1,c3")
    assert Label.parse("u:r:t:s0") != Label.parse("u:r:x:s0")
    assert Label.parse("u:r:t") != Label.parse("u:r:t:s0")


@pytest.mark.parametrize("text, field_words", [
    ("", "needs at least"),
    ("u:r", "needs at least"),
    ("u::t:s0", "role ''"),
    ("u:r:t:", "level ''"),
    ("u:r:t:s0:", "empty category list"),
    ("u:r:t:x0", "not a sensitivity"),
    ("u:r:t:s0:c5.c2", "does not go upwards"),
    ("u:r:t:s0:c3.c3", "does not go upwards"),
    ("u:r:t:s0:d1", "not a category"),
    ("u:r:t:s0:c01", "leading zero"),
    ("u:r:t:s0:c70000", "above the limit"),
    ("u:r:t:s1-s0", "does not dominate"),
    ("u:r:t:s0:c1-s0", "does not dominate"),
    ("u:r:t:s0-s1-s2", "more than one '-'"),
    ('u:r:t:s0:c1,c2",ro', "double quote"),
    ("u:r:t:s0:c1'", "single quote"),
    ("u:r:t:s0\n", "whitespace"),
    ("u:r:t:s0 ", "whitespace"),
    ("u:r:t:s0\0", "NUL"),
    ("u:r:t:s0\\", "backslash"),
    ("u:r:t:s0:c1,ro=1", "'='"),
    ("u,x:r:t:s0", "outside the category list"),
    ("u:r,x:t:s0", "outside the category list"),
    ("u:r:t,x:s0", "outside the category list"),
    ("u:r:1t:s0", "not an SELinux identifier"),
    ("u:r:t:s0:c1,\u00e9", "non-ASCII"),
    ("u:r:t:s0:c" + "1" * 5000, "longer than 4096"),
])
def test_bad_labels_are_refused_with_the_reason(text, field_words):
    with pytest.raises(InvalidLabel) as info:
        Label.parse(text)
    message = str(info.value)
    assert "context" in message
    assert field_words in message


def test_error_names_the_field_and_value():
    with pytest.raises(InvalidLabel) as info:
        Label.parse("u:r:t:s0:c9.c1", field_name="context mount option")
    assert info.value.field == "context mount option"
    assert info.value.value == "u:r:t:s0:c9.c1"


def test_non_string_is_refused():
    with pytest.raises(InvalidLabel):
        Label.parse(None)
    with pytest.raises(InvalidLabel):
        Level.parse(7)


def test_mount_option_is_exactly_what_kubelet_sends():
    label = Label.parse("system_u:object_r:container_file_t:s0:c15,c25")
    assert context_mount_option(label) == 'context="system_u:object_r:container_file_t:s0:c15,c25"'
    # kubelet keeps the pod's spelling; it does not canonicalise
    assert context_mount_option(Label.parse("u:r:t:s0:c2,c1")) == 'context="u:r:t:s0:c2,c1"'


def test_mount_option_refuses_raw_strings():
    with pytest.raises(TypeError):
        context_mount_option('u:r:t:s0",ro')


def test_go_quote_escapes_like_go():
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there") == '"tab\\there"'
    assert go_quote("\x01") == '"\\x01"'


@pytest.mark.parametrize("option, expected", [
    ('context="u:r:t:s0:c1,c2"', ("context", "u:r:t:s0:c1,c2")),
    ("context=u:r:t:s0", ("context", "u:r:t:s0")),
    ("fscontext='u:r:t:s0'", ("fscontext", "u:r:t:s0")),
    ("rootcontext=u:r:t:s0:c3", ("rootcontext", "u:r:t:s0:c3")),
    ("noatime", None),
    ("contexts=u:r:t:s0", None),
])
def test_parse_context_option(option, expected):
    parsed = parse_context_option(option)
    if expected is None:
        assert parsed is None
    else:
        assert (parsed[0], parsed[1].text) == expected


def test_parse_context_option_rejects_bad_values():
    with pytest.raises(InvalidLabel) as info:
        parse_context_option('context="u:r:t:s0:c1 c2"')
    assert "context mount option" in str(info.value)


# --- properties -----------------------------------------------------------------------------------------

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
category_sets = st.sets(st.integers(0, 1023), max_size=12)


@st.composite
def levels(draw):
    low_sens = draw(st.integers(0, 15))
    low = draw(category_sets)
    text = f"s{low_sens}" + (":" + ",".join(f"c{c}" for c in draw(st.permutations(sorted(low)))) if low else "")
    if draw(st.booleans()):
        high_sens = draw(st.integers(low_sens, 15))
        high = low | draw(category_sets)
        text += f"-s{high_sens}" + (":" + ",".join(f"c{c}" for c in sorted(high)) if high else "")
    return text


@st.composite
def labels(draw):
    return f"{draw(identifiers)}:{draw(identifiers)}:{draw(identifiers)}:{draw(levels())}"


@given(labels())
@settings(max_examples=400)
def test_round_trip_through_canonical_form(text):
    label = Label.parse(text)
    again = Label.parse(label.canonical)
    assert again == label
    assert again.canonical == label.canonical


@given(identifiers, identifiers, identifiers, st.integers(0, 15), category_sets)
@settings(max_examples=300)
def test_category_order_and_ranges_do_not_change_identity(user, role, type_, sens, cats):
    if not cats:
        return
    forward = Label.parse(f"{user}:{role}:{type_}:s{sens}:" + ",".join(f"c{c}" for c in sorted(cats)))
    backward = Label.parse(f"{user}:{role}:{type_}:s{sens}:" + ",".join(f"c{c}" for c in sorted(cats, reverse=True)))
    assert forward == backward
    assert forward.level.categories == tuple(sorted(cats))


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=60))
@settings(max_examples=1500)
def test_no_accepted_string_can_inject_a_mount_option(text):
    try:
        label = Label.parse(text)
    except InvalidLabel:
        return
    option = context_mount_option(label)
    # The option survives a kernel-style split as one option, and reads back as the same label.
    assert split_options("rw," + option + ",noexec") == ["rw", option, "noexec"]
    key, back = parse_context_option(option)
    assert key == "context" and back == label and back.text == label.text
    inner = option[len('context="'):-1]
    assert '"' not in inner and "\\" not in inner and not any(ch.isspace() for ch in inner)


@given(labels().map(lambda t: t.replace(":", "", 1)) | st.just("u:r:t:s0:c1,,c2") | st.just("u:r:t:s0,c1"))
def test_near_misses_are_refused_or_exact(text):
    try:
        label = Label.parse(text)
    except InvalidLabel:
        return
    assert Label.parse(label.canonical) == label


@pytest.mark.parametrize("given,canonical", [
    ("s0:c2,c1", "s0:c1,c2"), ("s0:c1.c3", "s0:c1.c3"), ("s0:c3,c2,c1", "s0:c1.c3"),
    ("s0:c1,c2-s0:c1,c2", "s0:c1,c2"), ("s0-s0:c2,c1", "s0-s0:c1,c2"), ("s0", "s0"),
    ("s0:c1,x", None), ("", None), (None, None),
])
def test_canonical_level_from_text_or_value(given, canonical):
    assert canonical_level(given) == canonical
    if canonical is not None:
        level = Level.parse(given)
        assert canonical_level(level) == str(level) == level.canonical == canonical
        assert level == Level.parse(canonical) and hash(level) == hash(Level.parse(canonical))
