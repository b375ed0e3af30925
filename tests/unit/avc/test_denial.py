"""agent/avc/denial.py: the Denial value and what an AVC record's text makes of it, in every form (read
through the assembler, as the agent reads them, and through the general parser alone)."""

import dataclasses

import pytest

from agent.avc.assembler import EventAssembler, parse_lines
from agent.avc.denial import (
    Denial,
    as_int,
    avc_values,
    context_level,
    context_type,
    denial_from_record,
    make_denial,
    parse_context,
)
from agent.avc.record import parse_fields, parse_record
from agent.label import Label
from tests.unit.avc.test_assembler import EVENT
from tests.unit.avc.test_record import AUSEARCH, DMESG, ENRICHED, KMSG, NETLINK, NODE, RAW, SCON, TCON, USER_AVC


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


def test_enriched_fields_do_not_reach_the_denial():
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


def test_denial_from_non_avc_record_is_none():
    assert denial_from_record(parse_record(EVENT[2])) is None


def test_to_json_is_plain():
    [denial], _ = parse_lines([RAW])
    data = denial.to_json()
    assert data["scontext"] == SCON and data["permissions"] == ["read"] and data["result"] == "denied"
    assert isinstance(denial, Denial)


@pytest.mark.parametrize("line,hint,rtype", [
    (RAW, None, "AVC"), (NODE, None, "AVC"), (ENRICHED, None, "AVC"), (KMSG, None, "AVC"),
    (DMESG, None, "AVC"), (NETLINK, 1400, "AVC"), (USER_AVC, 1107, "USER_AVC"),
], ids=["raw", "node", "enriched", "kmsg", "dmesg", "netlink", "user_avc"])
def test_the_general_parser_reads_every_form(line, hint, rtype):
    denial = denial_from_record(parse_record(line, hint))
    assert (denial.serial, denial.permissions, denial.pid, denial.comm, denial.record_type) == (
        456, ("read",), 4242, "cat", rtype)
    assert denial.scontext == Label.parse(SCON) and denial.tcontext == Label.parse(TCON)


def test_a_denial_made_from_some_fields_equals_one_made_by_init():
    values = {"timestamp": 1.5, "serial": 7, "permissions": ("read",), "scontext": SCON, "tcontext": TCON,
              "tclass": "file", "pid": 3}
    built = make_denial(dict(values))
    assert built == Denial(**values)
    assert repr(built) == repr(Denial(**values)) and hash(built) == hash(Denial(**values))
    assert dataclasses.asdict(built) == dataclasses.asdict(Denial(**values))
    assert built.extra == () and built.exe is None and built.denied is True


def test_avc_values_read_contexts_through_the_given_reader():
    seen = []

    def context(text):
        seen.append(text)
        return parse_context(text)

    values = avc_values(parse_record(RAW), context)
    assert seen == [SCON, TCON] and values["scontext"] == Label.parse(SCON)
    assert avc_values(parse_record(RAW)) == values


def test_levels_are_canonical_and_only_for_labels():
    denial = Denial(1.0, 1, ("read",), Label.parse("u:r:t:s0:c9,c2,c3"), "u:r:weird_t:s0:c1,c2", "file")
    assert denial.source_level == "s0:c2,c3,c9" and denial.target_level is None
    assert context_level(parse_context("u:r:t:s0-s0:c1.c3")) == "s0-s0:c1.c3"
    assert context_level(None) is None and context_type(None) is None


def test_numbers_in_fields():
    assert [as_int(v) for v in ("12", "0x1f", "x", None, "0x")] == [12, 31, None, None, None]
