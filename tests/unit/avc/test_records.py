"""agent/avc/records.py: every text form of an AVC, multi-record events, and garbage."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.avc.records import (
    Denial,
    EventAssembler,
    context_type,
    denial_from_record,
    parse_fields,
    parse_lines,
    parse_record,
)
from agent.label import Label

SCON = "system_u:system_r:container_t:s0:c1,c2"
TCON = "system_u:object_r:container_file_t:s0:c3,c4"
AVC_TEXT = (f'avc:  denied  {{ read }} for  pid=4242 comm="cat" name="x" dev="loop0" ino=12 '
            f"scontext={SCON} tcontext={TCON} tclass=file permissive=0")

RAW = f"type=AVC msg=audit(1700000000.123:456): {AVC_TEXT}"
NODE = f"node=worker-1 type=AVC msg=audit(1700000000.123:456): {AVC_TEXT}"
ENRICHED = (f"type=AVC msg=audit(1700000000.123:456): {AVC_TEXT}"
            '\x1dARCH=x86_64 SYSCALL=openat AUID="unset" UID="root" GID="root"')
KMSG = f"[ 3664.881234] audit: type=1400 audit(1700000000.123:456): {AVC_TEXT}"
DMESG = f"audit: type=1400 audit(1700000000.123:456): {AVC_TEXT}"
NETLINK = f"audit(1700000000.123:456): {AVC_TEXT}"
USER_AVC = ("audit(1700000000.123:456): pid=10479 uid=0 auid=4294967295 ses=4294967295 "
            f"msg='{AVC_TEXT}'")
AUSEARCH = ("type=AVC msg=audit(02/12/2024 10:57:55.073:456) : avc:  denied  { read write } for  "
            f"pid=4242 comm=cat path=/dev/ptmx scontext={SCON} tcontext={TCON} tclass=chr_file permissive=0")


@pytest.mark.parametrize("line,hint,rtype", [
    (RAW, None, "AVC"), (NODE, None, "AVC"), (ENRICHED, None, "AVC"), (KMSG, None, "AVC"),
    (DMESG, None, "AVC"), (NETLINK, 1400, "AVC"), (USER_AVC, 1107, "USER_AVC"),
], ids=["raw", "node", "enriched", "kmsg", "dmesg", "netlink", "user_avc"])
def test_every_form_gives_the_same_denial(line, hint, rtype):
    denials, stats = parse_lines_with_hint([(line, hint)])
    assert stats.bad_lines == 0
    [denial] = denials
    assert denial.timestamp == pytest.approx(1700000000.123)
    assert denial.serial == 456
    assert denial.permissions == ("read",)
    assert denial.denied and not denial.granted
    assert denial.permissive is False
    assert denial.pid == 4242 and denial.comm == "cat" and denial.name == "x"
    assert denial.dev == "loop0" and denial.ino == 12
    assert isinstance(denial.scontext, Label) and denial.scontext == Label.parse(SCON)
    assert denial.tcontext == Label.parse(TCON)
    assert denial.tclass == "file"
    assert denial.record_type == rtype
    assert denial.source_type == "container_t" and denial.target_type == "container_file_t"
    assert denial.source_level == "s0:c1,c2" and denial.target_level == "s0:c3,c4"
    assert denial.enforced


def parse_lines_with_hint(items):
    assembler = EventAssembler()
    out = []
    for line, hint in items:
        out.extend(assembler.feed_line(line, hint))
    out.extend(assembler.finish())
    return out, assembler.stats


def test_node_prefix_is_kept():
    [denial], _ = parse_lines([NODE])
    assert denial.node == "worker-1"


def test_enriched_fields_after_the_separator_are_dropped():
    record = parse_record(ENRICHED)
    assert "\x1d" not in record.body and "UID=" not in record.body
    [denial], _ = parse_lines([ENRICHED])
    assert denial.extra == ()


def test_user_avc_uses_the_inner_pid_not_the_object_managers():
    [denial], _ = parse_lines_with_hint([(USER_AVC, 1107)])
    assert denial.pid == 4242
    assert denial.permissive is False  # the closing quote is not part of the value


def test_ausearch_interpreted_form():
    [denial], _ = parse_lines([AUSEARCH])
    assert denial.permissions == ("read", "write")
    assert denial.comm == "cat" and denial.path == "/dev/ptmx"
    assert denial.serial == 456
    assert denial.tclass == "chr_file"


def test_multi_permission_and_granted_and_permissive():
    line = (f"type=AVC msg=audit(1.5:7): avc:  granted  {{ read write open }} for pid=1 comm=\"x\" "
            f"scontext={SCON} tcontext={TCON} tclass=file")
    [denial], _ = parse_lines([line])
    assert denial.permissions == ("read", "write", "open")
    assert denial.granted and not denial.denied and not denial.enforced
    assert denial.permissive is None
    line = RAW.replace("permissive=0", "permissive=1")
    [denial], _ = parse_lines([line])
    assert denial.permissive is True and not denial.enforced


def test_hex_encoded_untrusted_strings_are_decoded():
    comm = "my app".encode().hex().upper()
    path = "/tmp/a b".encode().hex().upper()
    line = (f"type=AVC msg=audit(1.000:9): avc:  denied  {{ getattr }} for  pid=3 comm={comm} path={path} "
            f"dev=\"tmpfs\" ino=4 scontext={SCON} tcontext={TCON} tclass=file permissive=0")
    [denial], _ = parse_lines([line])
    assert denial.comm == "my app" and denial.path == "/tmp/a b"
    # A quoted value that happens to look like hex stays as written.
    assert parse_fields('name="ABCD"')["name"] == "ABCD"


def test_unparsable_context_is_kept_as_raw_text():
    line = RAW.replace(TCON, "system_u:object_r:weird_t:s0:c9999999")
    [denial], _ = parse_lines([line])
    assert denial.tcontext == "system_u:object_r:weird_t:s0:c9999999"
    assert denial.target_type == "weird_t" and denial.target_level is None
    assert context_type("garbage") is None


def test_unknown_permission_bits_are_kept():
    line = RAW.replace("{ read }", "{ read 0x800000 }")
    [denial], _ = parse_lines([line])
    assert denial.permissions == ("read", "0x800000")


def test_capability_and_network_fields_go_to_extra():
    line = (f"type=AVC msg=audit(1.000:9): avc:  denied  {{ net_admin }} for  pid=3 comm=\"ip\" capability=12 "
            f"scontext={SCON} tcontext={SCON} tclass=capability permissive=0")
    [denial], _ = parse_lines([line])
    assert ("capability", "12") in denial.extra
    assert denial.tclass == "capability"


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


def test_denial_from_non_avc_record_is_none():
    assert denial_from_record(parse_record(EVENT[2])) is None


def test_to_json_is_plain():
    [denial], _ = parse_lines([RAW])
    data = denial.to_json()
    assert data["scontext"] == SCON and data["permissions"] == ["read"] and data["result"] == "denied"
    assert isinstance(denial, Denial)


def test_lines_off_the_fast_path_still_parse():
    from agent.avc import fastpath

    odd = RAW.replace(" ino=12 ", " ino=12 ioctlcmd=0x5401 ")
    assert fastpath.read(odd) is None
    [denial], _ = parse_lines([odd])
    assert ("ioctlcmd", "0x5401") in denial.extra and denial.ino == 12
