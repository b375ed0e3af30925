"""agent/avc/assembler.py: multi-record events, the pending window, garbage, and the two readers behind it."""

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.avc.assembler import EventAssembler, parse_lines
from agent.avc.fastpath import FastReader
from tests.unit.avc.test_record import AVC_TEXT, RAW, SCON, TCON


EVENT = [
    f"type=AVC msg=audit(1700000000.500:900): {AVC_TEXT}",
    f"type=AVC msg=audit(1700000000.500:900): {AVC_TEXT.replace('{ read }', '{ open }')}",
    "type=SYSCALL msg=audit(1700000000.500:900): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c "
    'items=1 ppid=4000 pid=4242 auid=4294967295 uid=0 comm="cat" exe="/usr/bin/cat" '
    f"subj={SCON} key=(null)",
    'type=CWD msg=audit(1700000000.500:900): cwd="/work"',
    'type=PATH msg=audit(1700000000.500:900): item=0 name="x" inode=12 dev=07:00 mode=0100644 '
    f"obj={TCON} nametype=NORMAL",
    "type=PROCTITLE msg=audit(1700000000.500:900): proctitle=636174002F776F726B2F78",
    "type=EOE msg=audit(1700000000.500:900): ",
]


def test_multi_record_event_is_assembled():
    assembler = EventAssembler()
    emitted = []
    for line in EVENT[:-1]:
        emitted.extend(assembler.feed_line(line))
    assert emitted == [] and assembler.pending == 1  # nothing until the event ends
    emitted.extend(assembler.feed_line(EVENT[-1]))  # EOE closes it
    assert [d.permissions for d in emitted] == [("read",), ("open",)]
    for denial in emitted:
        assert denial.exe == "/usr/bin/cat" and denial.ppid == 4000 and denial.syscall == 257
        assert denial.success is False and denial.cwd == "/work" and denial.proctitle == "cat /work/x"
    assert assembler.stats.records["SYSCALL"] == 1 and assembler.stats.records["EOE"] == 1
    assert assembler.pending == 0


def test_interleaved_events_are_kept_apart():
    other = [line.replace(":900)", ":901)").replace("pid=4242", "pid=5555") for line in EVENT[:3]]
    lines = [EVENT[0], other[0], EVENT[2], other[2]]
    denials, _ = parse_lines(lines)
    by_serial = {d.serial: d for d in denials}
    assert by_serial[900].pid == 4242 and by_serial[900].exe == "/usr/bin/cat"
    assert by_serial[901].pid == 5555


def test_pending_window_and_expiry_close_events_without_eoe():
    assembler = EventAssembler(max_pending=2, linger=1.0)
    out = []
    for serial in range(1, 4):
        out.extend(assembler.feed_line(RAW.replace(":456)", f":{serial})")))
    assert [d.serial for d in out] == [1]  # the oldest left the window
    assert assembler.expire(1700000000.123 + 0.5) == []  # not old enough yet
    assert [d.serial for d in assembler.expire(1700000000.123 + 2)] == [2, 3]
    assert assembler.pending == 0


def test_companion_without_avc_emits_nothing():
    denials, stats = parse_lines([EVENT[2], EVENT[3], EVENT[-1]])
    assert denials == [] and stats.denials == 0


GARBAGE = [
    "", "   ", "hello world", "type=AVC msg=audit(", "type=AVC msg=audit(abc:def): avc: denied",
    "type=AVC msg=audit(1.1:2): avc:  denied  { } for scontext=a tcontext=b tclass=c",
    "type=AVC msg=audit(1.1:3): avc:  denied  { read } for pid=1",  # no contexts
    "type=AVC msg=audit(13/45/2024 99:99:99.000:4) : avc:  denied  { read }",
    "\x00\x01\x02\xff", "audit(1.1:5): " + "x" * 70000, "type=AVC msg=audit(1.1:6): avc: denied {",
]


def test_garbage_never_raises_and_is_counted():
    denials, stats = parse_lines(GARBAGE + [RAW])
    assert [d.serial for d in denials] == [456]
    # Lines without a readable record header are bad lines; AVC records without the required fields are
    # counted as unreadable AVCs.
    assert stats.bad_lines == 8
    assert stats.avc_unreadable == 3
    assert stats.lines == len(GARBAGE) + 1


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_safe(text):
    assembler = EventAssembler()
    assembler.feed_line(text)
    assembler.feed_line("type=AVC msg=audit(1.1:1): avc:  denied  { " + text)
    assembler.finish()


def test_lines_off_the_fast_path_still_parse():
    odd = RAW.replace(" ino=12 ", " ino=12 ioctlcmd=0x5401 ")
    assert FastReader().read(odd) is None
    [denial], _ = parse_lines([odd])
    assert ("ioctlcmd", "0x5401") in denial.extra and denial.ino == 12


def test_each_assembler_has_its_own_reader_and_both_readers_share_its_contexts():
    first, second = EventAssembler(), EventAssembler()
    assert first.reader is not second.reader
    [fast] = first.feed_line(RAW) + first.finish()
    [general] = first.feed_line(RAW.replace(" ino=12 ", " ino=12 ioctlcmd=0x5401 ").replace(":456)", ":457)"))\
        + first.finish()
    assert fast.scontext is general.scontext  # one Label per context text in a stream
    assert SCON in first.reader.contexts and SCON not in second.reader.contexts
