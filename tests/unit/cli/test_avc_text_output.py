"""Terminal escapes in audit records: `comm`, `path` and `name` are any bytes a process chose (the kernel writes
them in hex when they hold odd bytes). Text output shows control characters escaped, so a denial cannot
retitle, clear or rewrite the reader's terminal; JSON output keeps the decoded values exact."""

import json

import pytest

from agent.cli.main import main
from agent.cli.printable import printable

SCON = "system_u:system_r:container_t:s0:c1,c2"
TITLE = "\x1b]0;pwned\x07"   # OSC: set the terminal title
CLEAR = "\x1b[2J"            # CSI: clear the screen
CONTROL = set(range(0x20)) | {0x7F} | set(range(0x80, 0xA0))


def hex_of(text: str) -> str:
    return text.encode("utf-8").hex().upper()


def record(serial: int, comm: str, path: str, name: str) -> str:
    return (f"type=AVC msg=audit(1700000000.{serial:03d}:{serial}): avc:  denied  {{ read }} for  pid=4242 "
            f"comm={hex_of(comm)} path={hex_of(path)} name={hex_of(name)} dev=\"sda1\" ino=12 scontext={SCON} "
            f"tcontext=system_u:object_r:user_home_t:s0 tclass=file permissive=0")


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.log"
    path.write_text("\n".join([record(1, TITLE, "/data/" + CLEAR, "x"), record(2, CLEAR, "/p\x9b31m", TITLE),
                               record(3, "\x7fdel\x1b", "/q\x1b", "lone\x1b")]) + "\n")
    return path


def watch(capsys, log, tmp_path, output):
    code = main(["avc", "watch", "--source", f"file:{log}", "--from-beginning", "-o", output, "--count", "3",
                 "--proc-root", str(tmp_path / "proc")])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_text_output_escapes_control_characters(capsys, log, tmp_path):
    out = watch(capsys, log, tmp_path, "text")
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert not [ch for ch in line if ord(ch) in CONTROL], repr(line)
    assert "comm=\\x1b]0;pwned\\x07 /data/\\x1b[2J" in lines[0]
    assert "comm=\\x1b[2J" in lines[1] and "\\x9b31m" in lines[1]
    assert "comm=\\x7fdel\\x1b /q\\x1b" in lines[2]


def test_json_output_stays_exact(capsys, log, tmp_path):
    out = watch(capsys, log, tmp_path, "json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["comm"] for r in records] == [TITLE, CLEAR, "\x7fdel\x1b"]
    assert records[0]["path"] == "/data/" + CLEAR and records[1]["path"] == "/p\x9b31m" and records[1]["name"] == TITLE
    assert "\x1b" not in out  # JSON escapes them itself (\u001b): exact values, nothing raw on the terminal


@pytest.mark.parametrize("text, shown", [
    ("plain /path name", "plain /path name"),
    ("\x1b", "\\x1b"), ("\x00\x07\t\n\r", "\\x00\\x07\\x09\\x0a\\x0d"), ("\x7f", "\\x7f"), ("\x9b\x85", "\\x9b\\x85"),
    ("back\\slash", "back\\\\slash"),        # so an escape shown can always be told from the text "\x1b"
    ("caf\u00e9 \u4e2d", "caf\u00e9 \u4e2d"),  # printable non-ASCII stays as it is
    ("\u202eevil", "\\u202eevil"),         # a bidi override would reorder what follows it
])
def test_printable(text, shown):
    assert printable(text) == shown


def test_policy_generate_shows_record_text_escaped(capsys, tmp_path):
    """A context field the rules cannot use is reported on stderr with the record's text: escaped too."""
    log = tmp_path / "audit.log"
    log.write_text(record(1, "app", "/p", "n").replace(f"scontext={SCON}", f"scontext=x{CLEAR}{TITLE}") + "\n")
    code = main(["policy", "generate", "--from", str(log), "--module", "m", "--output-dir", str(tmp_path / "out"),
                 "--proc-root", str(tmp_path / "proc")])
    _, err = capsys.readouterr()
    assert code == 1 and "skipped (unreadable context): x\\x1b[2J\\x1b]0;pwned\\x07" in err
    assert not [ch for ch in err if ord(ch) in CONTROL - {0x0A}], repr(err)
