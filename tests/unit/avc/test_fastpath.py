"""agent/avc/fastpath.py: the cheap reading of common layouts must give exactly what the general parser gives.

Each test feeds the same lines to an EventAssembler as it runs (fast path first) and to one whose fast path
never answers, and compares everything: the denials field by field (also `extra`, which equality skips,
and the spelling of contexts), their order, and the parse statistics.
"""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.avc.assembler import EventAssembler
from agent.avc.denial import Denial
from agent.avc.fastpath import FastReader
from agent.avc.record import MAX_LINE
from agent.label import Label

from tests.unit.avc.test_assembler import EVENT as ASSEMBLER_EVENT
from tests.unit.avc.test_record import AVC_TEXT as AVC
from tests.unit.avc.test_record import RAW, SCON, TCON


class GeneralOnly(FastReader):
    """A reader that reads nothing itself: every line goes to the general parser."""

    def read(self, text, hint=None):
        return None


def general_assembler(**options) -> EventAssembler:
    return EventAssembler(reader=GeneralOnly(), **options)


def fast_read(text, hint=None):
    return FastReader().read(text, hint)


def snapshot(denial: Denial) -> tuple:
    """Every field of a denial as text, with the spelling of Label contexts."""
    out = []
    for spec in dataclasses.fields(Denial):
        value = getattr(denial, spec.name)
        out.append((spec.name, type(value).__name__, repr(value), getattr(value, "text", None)))
    return tuple(out)


def run(assembler: EventAssembler, items) -> tuple:
    denials = []
    for text, hint in items:
        denials.extend(assembler.feed_line(text, hint))
    denials.extend(assembler.finish())
    stats = assembler.stats
    return ([snapshot(d) for d in denials], denials, stats.lines, stats.bad_lines, dict(stats.records),
            stats.denials, stats.avc_unreadable)


def assert_same(items):
    items = [(item, None) if isinstance(item, str) else item for item in items]
    fast = run(EventAssembler(), items)
    general = run(general_assembler(), items)
    assert fast[0] == general[0]
    assert fast[1] == general[1]
    assert fast[2:] == general[2:]
    return fast[1]


# Lines in the layouts the fast path reads.
COMMON = [
    RAW,
    f"node=worker-1 type=AVC msg=audit(1700000000.123:456): {AVC}",
    f'type=AVC msg=audit(1700000000.123:456): {AVC}\x1dARCH=x86_64 SYSCALL=openat UID="root" GID="root"',
    f"node=w type=AVC msg=audit(1700000000.123:456): {AVC}\x1dAUID=\"unset\"",
    f"[ 3664.881234] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[3664.881234] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"type=1400 msg=audit(1700000000.123:456): {AVC}",
    RAW.replace("permissive=0", "permissive=1"),
    RAW.replace(" permissive=0", ""),
    RAW.replace("{ read }", "{ read write open }"),
    RAW.replace("denied", "granted"),
    RAW.replace(' name="x"', ' path="/a/b"'),
    RAW.replace(' name="x"', ' path="/a/b" name="c"'),
    RAW.replace(' name="x" dev="loop0" ino=12', ""),
    RAW.replace(' dev="loop0"', ""),
    RAW.replace(" ino=12", ""),
    RAW.replace('name="x"', 'name=""'),
    RAW.replace('name="x"', 'name="a\'b=c"'),
    RAW.replace("permissive=0", "permissive=0  "),
    RAW.replace("permissive=0", "permissive=0 \t"),
    RAW.replace(TCON, "system_u:object_r:weird_t:s0:c9999999"),  # kept as text
    RAW.replace(SCON, "garbage"),
    RAW.replace("pid=4242", "pid=007"),
    RAW.replace("{ read }", "{  }"),  # empty permission list: an unreadable AVC, still opens the event
    RAW.replace("{ read }", "{ read 0x800000 }"),
    RAW.replace("1700000000.123:456", "1.000:9"),
]

# Lines the fast path leaves to the general parser (or reads only in part); all must still agree.
ODD = [
    RAW.replace('comm="cat"', "comm=6D7920617070"),  # hex: left to the general parser
    RAW.replace('name="x"', "name=2F746D702F6120620A"),
    RAW.replace('comm="cat"', "comm=cat"),
    RAW.replace('name="x"', 'name="a b"'),
    RAW.replace('name="x"', 'name="a'),  # unclosed quote: the general parser reads the line its own way
    RAW.replace('name="x"', "name='x'"),
    RAW.replace('name="x"', 'name="x\ty"'),
    RAW.replace('name="x"', 'name="x\x1cy"'),
    RAW.replace('name="x"', 'name="x\x85y"'),
    RAW.replace('name="x"', 'name="x\x1dy"'),
    RAW.replace('name="x"', 'name="é"'),
    RAW.replace('name="x" ', 'name="x"  '),
    RAW.replace(" ino=12 ", " ino=12 ioctlcmd=0x5401 "),
    RAW.replace(" ino=12", " ino=0x1f"),
    RAW.replace(' dev="loop0"', ""). replace(' name="x"', ' dev="loop0" name="x"'),  # out of order
    RAW.replace(' name="x"', ' name="x" name="y"'),
    RAW.replace("tclass=file", "tclass=file trawcon=x"),
    RAW.replace("permissive=0", "permissive=2"),
    RAW.replace("permissive=0", "permissive=0\n"),
    RAW.replace("scontext=", 'scontext="') + '"',
    RAW.replace(f"scontext={SCON} ", ""),
    RAW.replace("{ read }", "{ read\x1d }"),
    RAW.replace("{ read }", "{ re\x1ead }"),
    RAW.replace("{ read }", "{ read\tx }"),
    RAW.replace("{ read }", "{ read } }"),
    RAW.replace("denied  {", "denied {"),
    RAW.replace("1700000000.123:456", "1700000000.12:456"),
    RAW.replace("1700000000.123:456", "1700000000:456"),
    RAW.replace("1700000000.123:456", "١٧٠.١٢٣:٤٥٦"),
    RAW.replace("1700000000.123:456", "1.2²:3"),
    RAW.replace("type=AVC", "type=USER_AVC"),
    RAW.replace("type=AVC", "type=SYSCALL"),
    RAW.replace("type=AVC", "type=FOO"),
    RAW.replace("type=AVC", "type=UNKNOWN"),
    RAW.replace("type=AVC msg=", ""),
    RAW.replace("type=AVC msg=", "node=a(b type=AVC msg="),
    RAW.replace("type=AVC msg=", "node=type=SYSCALL type=AVC msg="),
    RAW.replace("type=AVC msg=", "node=" + "n" * 190 + " type=AVC msg="),
    RAW.replace("type=AVC msg=", "x\x1dtype=AVC msg="),
    f"[ 3664.881234 x] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[ 1.0] node=x audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[node=evil] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[type=SYSCALL] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[1.0\x1d] audit: type=1400 audit(1700000000.123:456): {AVC}",
    f"[{'1' * 190}] audit: type=1400 audit(1700000000.123:456): {AVC}",
    RAW.replace(f"scontext={SCON}", f'scontext="{SCON}"'),
    RAW.replace(f"tcontext={TCON}", f"tcontext='{TCON}'"),
    RAW.replace('name="x"', 'name="' + "x" * MAX_LINE + '"'),  # too long: a bad line for both
    f"audit(1700000000.123:456): {AVC}",  # a netlink payload without its type
    "type=AVC msg=audit(02/12/2024 10:57:55.073:386) : avc:  denied  { read write } for  pid=4242 comm=cat "
    f"path=/dev/ptmx scontext={SCON} tcontext={TCON} tclass=chr_file permissive=0",
    ("audit(1700000000.123:456): pid=10479 uid=0 auid=4294967295 ses=4294967295 "
     f"msg='{AVC}'"),
    f"type=AVC msg=audit(1.000:9): avc:  denied  {{ net_admin }} for  pid=3 comm=\"ip\" capability=12 "
    f"scontext={SCON} tcontext={SCON} tclass=capability permissive=0",
    RAW + " " * 10,
    "audit(1.1:5): " + "x" * MAX_LINE,
    RAW + "x" * MAX_LINE,
    "", "garbage 1", "type=AVC msg=audit(", "type=AVC msg=audit(1.1:2): avc: denied", "\x00\x01",
]

# The test_assembler event, with an AVC_PATH record before its end.
EVENT = [*ASSEMBLER_EVENT[:-1], "type=AVC_PATH msg=audit(1700000000.500:900): path=\"/work/x\"", ASSEMBLER_EVENT[-1]]


@pytest.mark.parametrize("line", COMMON)
def test_common_layouts_take_the_fast_path_and_agree(line):
    assert fast_read(line) is not None
    assert_same([line])


@pytest.mark.parametrize("line", ODD)
def test_odd_lines_agree(line):
    assert_same([line])


def test_hex_and_open_quotes_are_left_to_the_general_parser():
    assert fast_read(RAW.replace('comm="cat"', "comm=6D7920617070")) is None
    assert fast_read(RAW.replace('name="x"', 'name="a')) is None
    assert fast_read(RAW.replace(" ino=12 ", " ino=12 ioctlcmd=0x5401 ")) is None
    assert fast_read(RAW.replace("type=AVC", "type=USER_AVC")) is None


def test_fast_denial_fields():
    [denial] = assert_same([EVENT[0].replace("1700000000.500", "1700000000.123")])
    assert denial.permissions == ("read",) and denial.pid == 4242 and denial.comm == "cat"
    assert denial.name == "x" and denial.dev == "loop0" and denial.ino == 12 and denial.path is None
    assert isinstance(denial.scontext, Label) and denial.scontext.text == SCON
    assert denial.permissive is False and denial.denied and denial.node is None and denial.extra == ()


def test_events_with_companions_agree():
    denials = assert_same(EVENT)
    assert [d.permissions for d in denials] == [("read",), ("open",)]
    assert denials[0].exe == "/usr/bin/cat" and denials[0].cwd == "/work" and denials[0].path == "/work/x"
    assert denials[0].proctitle == "cat /work/x"
    # Companions first, interleaved events, an event pushed out of the window, records with node=.
    assert_same(EVENT[2:4] + EVENT[:2] + EVENT[4:])
    other = [line.replace(":900)", ":901)").replace("pid=4242", "pid=5") for line in EVENT]
    assert_same([x for pair in zip(EVENT, other) for x in pair])
    assert_same(["node=n " + line for line in EVENT])
    assert_same([line.replace("type=", "[ 1.5] audit: type=", 1) for line in EVENT])
    assert_same(EVENT[2:3] + [line.replace(":900)", f":{n})") for n in range(1000, 1070)
                                           for line in EVENT[:1]] + EVENT)
    # The companion of an event whose AVC the general parser reads.
    assert_same([EVENT[0].replace('comm="cat"', "comm=636174")] + EVENT[2:])


def test_odd_companions_agree():
    head = EVENT[0]
    for companion in [
        "type=SYSCALL msg=audit(1700000000.500:900): arch=c000003e syscall=257 success=no ppid=1 pid=2 "
        'comm="a" exe="/b"',
        "type=SYSCALL msg=audit(1700000000.500:900): \x1dARCH=x86_64 arch=c000003e syscall=1",
        "type=SYSCALL msg=audit(1700000000.500:900):\x1e arch=c000003e syscall=257 success=yes exit=3 ppid=1 "
        'pid=2 comm="a" exe="/b"',
        "type=SYSCALL msg=audit(1700000000.500:900): arch=c000003e syscall=257 comm=\"a b",
        "type=PROCTITLE msg=audit(1700000000.500:900): proctitle=\"quoted\"",
        "type=PROCTITLE msg=audit(1700000000.500:900): proctitle=61\x8562",
        "type=CWD msg=audit(1700000000.500:900):   cwd=\"/a\"  ",
        "type=1300 msg=audit(1700000000.500:900): arch=c000003e syscall=2 success=no exit=-13 ppid=3 pid=4 "
        'comm="z" exe="/z"',
        "type=USER_LOGIN msg=audit(1700000000.500:900): pid=1 msg='avc: nothing'",
        "type=MAC_STATUS msg=audit(1700000000.500:900): enforcing=1 av\x1ec: x",
        "type=SELINUX_ERR msg=audit(1700000000.500:900): op=security_compute_av reason=bounds avc:  denied "
        f"{{ read }} for pid=1 comm=\"x\" scontext={SCON} tcontext={TCON} tclass=file",
        "type=EOE msg=audit(1700000000.500:900):",
        f"[{'1' * 190}] audit: type=1300 audit(1700000000.500:900): arch=c000003e syscall=2 success=no "
        'exit=-13 ppid=3 pid=4 comm="z" exe="/z"',
        "type=EOE msg=audit(1700000000.500:901):",
    ]:
        assert_same([head, companion, EVENT[-1]])
        assert_same([companion, head])


def test_netlink_payloads_agree():
    payload = f"audit(1700000000.123:456): {AVC}"
    assert fast_read(payload, 1400) is not None
    items = [(payload, 1400),
             ("audit(1700000000.123:456): arch=c000003e syscall=257 success=no exit=-13 ppid=1 pid=4242 "
              'comm="cat" exe="/usr/bin/cat"', 1300),
             ("audit(1700000000.123:456): proctitle=636174", 1327),
             (f"audit(1700000000.123:457): pid=1 uid=0 msg='{AVC}'", 1107),
             (f"audit(1700000000.123:458): {AVC}", 1423),
             (f"node=x audit(1700000000.123:459): {AVC}", 1400),
             (f"type=AVC msg=audit(1700000000.123:460): {AVC}", 1400),
             (f"audit(1700000000.123:461): {AVC}", "AVC"),
             ("audit(1700000000.123:456): ", 1320)]
    assert_same(items)


def test_max_pending_zero_loses_avcs_the_same_way():
    fast, general = EventAssembler(max_pending=0), general_assembler()
    general.max_pending = 0
    assert run(fast, [(RAW, None)])[1:] == run(general, [(RAW, None)])[1:]


# --- generated lines --------------------------------------------------------------------------------------

PIECES = {
    "prefix": ["type=AVC msg=", "node=n1 type=AVC msg=", "[ 12.500000] audit: type=1400 ", "audit: type=1400 ",
               "[node=x] audit: type=1400 ", "[type=EOE] audit: type=1400 ",
               "type=1400 msg=", "", "type=AVC ", "node=a(b type=AVC msg=", "type=USER_AVC msg=",
               "[x] audit: type=1400 ", "type=SYSCALL msg=", "type=EOE msg=", "node= type=AVC msg="],
    "stamp": ["1700000000.123:456", "1.000:7", "1.5:7", "1.000:", "1:2", ".123:4", "1.123:4:5", "1.12a:3"],
    "close": ["): avc:  ", "): avc: ", ") : avc:  ", "):avc:  "],
    "result": ["denied  { ", "granted  { ", "denied { ", "denid  { "],
    "perms": ["read", "read write", "", "read }", "re\x1ead", "a\tb", "{"],
    "for": [" } for  pid=", " } for pid=", " }  for  pid=", "} for  pid="],
    "pid": ["42", "007", "", "x", "4 2"],
    "comm": [' comm="cat"', " comm=636174", ' comm="a b"', ' comm="', " comm=''", ' comm=""', " comm=cat",
             ' comm="c\\"t"', ""],
    "path": ["", ' path="/a"', " path=2F61", ' path="/a'],
    "name": ["", ' name="x"', ' name="x y"', ' name=""', " name=x=y"],
    "dev": ["", ' dev="loop0"', " dev=loop0", ' dev="a'],
    "ino": ["", " ino=12", " ino=x", " ino=0x1"],
    "extra": ["", " ioctlcmd=0x1", " capability=12"],
    "scontext": [f" scontext={SCON}", " scontext=a:b:c", " scontext=x", " scontext=\"q\"", ""],
    "tcontext": [f" tcontext={TCON}", " tcontext=u:r:t:s0", " tcontext=", ""],
    "tclass": [" tclass=file", " tclass=dir", " tclass=", ""],
    "permissive": [" permissive=0", " permissive=1", "", " permissive=2", " permissive=0 "],
    "suffix": ["", "\x1dARCH=x86_64", " ", "\t", "\n", " x=1", "\x1d", "\x85"],
}


@st.composite
def avc_lines(draw):
    # Mostly the kernel's own piece (the first), so that most lines are one step from the fast layout.
    parts = [PIECES[key][0] if draw(st.integers(0, 3)) else draw(st.sampled_from(PIECES[key]))
             for key in PIECES]
    line = "".join(parts[:1] + ["audit("] + parts[1:])
    if draw(st.booleans()):
        # A stray character anywhere, to reach the edges of every check.
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(' "\'=}{()\x1d\t:.0a')) + line[at:]
    return line


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(avc_lines(), min_size=1, max_size=6), st.sampled_from([None, 1400]))
def test_generated_lines_agree(lines, hint):
    if hint is not None:
        lines = [line.partition("audit(")[1] + line.partition("audit(")[2] if "audit(" in line else line
                 for line in lines]
    assert_same([(line, hint) for line in lines])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_text_agrees(text):
    assert_same([text, "type=AVC msg=audit(1.100:1): " + text, RAW[:40] + text])


# --- the pieces -------------------------------------------------------------------------------------------

def test_fast_path_caches_stay_bounded():
    reader = FastReader(contexts=64, prefixes=32, tails=16)
    for n in range(100):
        reader.read(RAW.replace("tclass=file", f"tclass=c{n}"))
        reader.read(RAW.replace("container_t", f"t{n}_t"))
        reader.read(f"node=n{n} " + RAW)
    assert (len(reader.tails), len(reader.prefixes), len(reader.contexts)) <= (16, 32, 64)
    assert len(reader.tails) > 1 and len(reader.prefixes) > 1 and len(reader.contexts) > 2


def test_readers_keep_their_caches_apart():
    first, second = FastReader(), FastReader()
    assert first.read(RAW) == second.read(RAW)
    assert first.read(RAW)[2]["scontext"] is first.read(RAW)[2]["scontext"]  # memoised within a reader
    assert first.read(RAW)[2]["scontext"] is not second.read(RAW)[2]["scontext"]  # nothing shared
