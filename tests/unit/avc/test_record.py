"""agent/avc/record.py: every text form of an audit record, the field reader, and lines that are not records.
The text forms defined here are shared by the other AVC tests."""

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.avc.record import (
    MAX_LINE,
    BoundedCache,
    Record,
    decode_value,
    finish_body,
    parse_fields,
    parse_record,
    record_prefix,
    syscall_fields,
)

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


@pytest.mark.parametrize("line,hint,rtype,node", [
    (RAW, None, "AVC", None), (NODE, None, "AVC", "worker-1"), (ENRICHED, None, "AVC", None),
    (KMSG, None, "AVC", None), (DMESG, None, "AVC", None), (NETLINK, 1400, "AVC", None),
    (USER_AVC, 1107, "USER_AVC", None), (NETLINK, None, "AVC", None), (NETLINK, "SYSCALL", "SYSCALL", None),
], ids=["raw", "node", "enriched", "kmsg", "dmesg", "netlink", "user_avc", "no_type", "named_hint"])
def test_every_form_gives_type_key_and_body(line, hint, rtype, node):
    record = parse_record(line, hint)
    assert (record.type, record.key, record.node) == (rtype, (1700000000.123, 456), node)
    assert record.body.endswith("permissive=0") or record.body.endswith("permissive=0'")
    assert "avc:" in record.body and "audit(" not in record.body


def test_ausearch_local_time_and_separator():
    record = parse_record(AUSEARCH)
    assert record.serial == 456 and record.body.startswith("avc:")
    assert record.timestamp == pytest.approx(datetime(2024, 2, 12, 10, 57, 55, 73000).timestamp())


def test_finish_body_is_idempotent():
    body = " avc: x\x1c\x1e\x85 y \x1dUID=\"root\""
    once = finish_body(body)
    assert once == "avc: x y" and finish_body(once) == once


def test_syscall_fields_in_kernel_order_and_otherwise():
    kernel = ("arch=c000003e syscall=257 success=no exit=-13 a0=1 items=1 ppid=4000 pid=4242 auid=1 uid=0 "
              'comm="cat" exe="/usr/bin/cat" subj=x key=(null)')
    assert syscall_fields(kernel) == {"syscall": "257", "ppid": "4000", "pid": "4242", "comm": "cat",
                                      "exe": "/usr/bin/cat", "success": "no"}
    shuffled = 'pid=7 comm=636174 syscall=1'
    assert syscall_fields(shuffled) == {"pid": "7", "comm": "cat", "syscall": "1"}


def test_record_prefix_reads_type_and_node():
    assert record_prefix("node=w1 type=AVC msg=") == ("AVC", "w1")
    assert record_prefix("audit: type=1400 ") == ("AVC", None)
    assert record_prefix("", 1300) == ("SYSCALL", None)
    assert record_prefix("", 9999) == ("9999", None)
    assert record_prefix("nothing here") == ("UNKNOWN", None)


def test_lines_without_a_header_are_not_records():
    for text in ("", "hello", "type=AVC msg=audit(", "audit(abc:def): x", "audit(1.1:5): " + "x" * MAX_LINE,
                 None, b"type=AVC msg=audit(1.1:1): x"):
        assert parse_record(text) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.integers(0, 3000)))
def test_parse_record_never_raises(text, hint):
    record = parse_record(text, hint)
    assert record is None or isinstance(record, Record)
    parse_fields(text)


def test_bounded_cache_keeps_at_most_its_limit():
    cache = BoundedCache(8)
    for n in range(100):
        assert cache.put(n, n * 2) == n * 2
        assert len(cache) <= 8
    assert cache.get(99) == 198 and cache.get(0) is None


def test_quoted_and_hex_values_are_decoded():
    assert parse_fields('comm=6D7920617070 name="ABCD" path=/x key=AB') == {
        "comm": "my app", "name": "ABCD", "path": "/x", "key": "AB"}
    assert parse_fields("proctitle=636174002F776F726B2F78") == {"proctitle": "cat /work/x"}
    assert parse_fields('cmdline="a b c" pid=1 pid=2') == {"cmdline": "a b c", "pid": "1"}
    assert decode_value("comm", "6D79") == "my" and decode_value("comm", "6D7") == "6D7"


def test_enriched_fields_after_the_separator_are_dropped():
    record = parse_record(ENRICHED)
    assert "\x1d" not in record.body and "UID=" not in record.body
