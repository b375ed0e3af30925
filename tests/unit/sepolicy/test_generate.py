"""agent/sepolicy/generate.py: dedup, determinism, denylist, module names, and the .te and CIL texts."""

import random
import shutil
import subprocess

import pytest

from agent.avc.assembler import parse_lines
from agent.errors import InvalidInput, InvalidModuleName
from agent.sepolicy.generate import (
    Denylist,
    Rule,
    build_ruleset,
    generate,
    mcs_mismatch,
    render_cil,
    render_te,
    rulesets_by_workload,
    validate_module_name,
)

C1 = "system_u:system_r:container_t:s0:c1,c2"


def avc(perms, target, tclass="file", source=C1, result="denied", serial=1):
    line = (f"type=AVC msg=audit(1.000:{serial}): avc:  {result}  {{ {perms} }} for  pid=1 comm=\"x\" "
            f"scontext={source} tcontext={target} tclass={tclass} permissive=0")
    [denial], _ = parse_lines([line])
    return denial


LOG = [
    avc("read open", "system_u:object_r:user_home_t:s0"),
    avc("open read", "system_u:object_r:user_home_t:s0:c1,c2", serial=2),  # same rules at another level
    avc("getattr", "system_u:object_r:user_home_t:s0", serial=3),
    avc("search", "system_u:object_r:user_home_t:s0", tclass="dir", serial=4),
    avc("name_bind", "system_u:object_r:http_port_t:s0", tclass="tcp_socket", serial=5),
    avc("read", "system_u:object_r:etc_t:s0", source="system_u:system_r:other_t:s0", serial=6),
]

TE = """module mymod 1.0;

require {
\ttype container_t;
\ttype etc_t;
\ttype http_port_t;
\ttype other_t;
\ttype user_home_t;
\tclass dir search;
\tclass file { getattr open read };
\tclass tcp_socket name_bind;
}

#============= container_t ==============
allow container_t http_port_t:tcp_socket name_bind;
allow container_t user_home_t:dir search;
allow container_t user_home_t:file { getattr open read };

#============= other_t ==============
allow other_t etc_t:file read;
"""

CIL = """;; rules from denials of: container_t other_t
(block mymod
    (blockinherit container)
    (allow process etc_t (file (read)))
    (allow process http_port_t (tcp_socket (name_bind)))
    (allow process user_home_t (dir (search)))
    (allow process user_home_t (file (getattr open read)))
)
"""


def test_dedup_drops_levels_and_order():
    rules = build_ruleset(LOG).rules
    assert Rule("container_t", "user_home_t", "file", "read") in rules
    assert len(rules) == 6  # read, open, getattr on file; search; name_bind; other_t read
    assert list(rules) == sorted(rules)


def test_te_text_exactly():
    assert render_te("mymod", build_ruleset(LOG)) == TE


def test_cil_text_exactly():
    assert render_cil("mymod", build_ruleset(LOG)) == CIL


def test_output_is_deterministic_under_any_input_order():
    texts = set()
    for seed in range(20):
        shuffled = list(LOG) * 3
        random.Random(seed).shuffle(shuffled)
        module = generate("mymod", shuffled, ("te", "cil"))
        texts.add((module.te, module.cil))
    assert len(texts) == 1


def test_self_rules():
    denial = avc("dac_override", C1, tclass="capability")
    ruleset = build_ruleset([denial], Denylist(allow_capabilities=True))
    assert "allow container_t self:capability dac_override;" in render_te("m", ruleset)
    assert "(allow process process (capability (dac_override)))" in render_cil("m", ruleset)


@pytest.mark.parametrize("perms,target,tclass,reason", [
    ("read", "system_u:object_r:shadow_t:s0", "file", "target type shadow_t"),
    ("read", "system_u:object_r:kernel_t:s0", "file", "target type kernel_t"),
    ("read", "system_u:object_r:security_t:s0", "file", "target type security_t"),
    ("relabelto", "system_u:object_r:etc_t:s0", "file", "permission relabelto"),
    ("mounton", "system_u:object_r:etc_t:s0", "dir", "permission mounton"),
    ("setenforce", "system_u:object_r:etc_t:s0", "file", "permission setenforce"),
    ("load_policy", "system_u:object_r:etc_t:s0", "file", "permission load_policy"),
    ("module_load", "system_u:object_r:etc_t:s0", "system", "class system"),
    ("sys_admin", C1, "capability", "pass --allow-capabilities"),
    ("bpf", C1, "capability2", "pass --allow-capabilities"),
])
def test_denylist_refuses_and_reports(perms, target, tclass, reason):
    ruleset = build_ruleset([avc(perms, target, tclass=tclass)])
    assert ruleset.rules == ()
    [refusal] = ruleset.refused
    assert reason in refusal.reason
    assert refusal.rule.permission == perms


def test_capabilities_on_request_but_not_the_rest_of_the_denylist():
    denials = [avc("sys_admin", C1, tclass="capability"), avc("read", "system_u:object_r:shadow_t:s0", serial=2)]
    ruleset = build_ruleset(denials, Denylist(allow_capabilities=True))
    assert [r.permission for r in ruleset.rules] == ["sys_admin"]
    assert [r.rule.target for r in ruleset.refused] == ["shadow_t"]


def test_refusal_keeps_the_safe_permissions_of_the_same_denial():
    ruleset = build_ruleset([avc("read relabelto", "system_u:object_r:etc_t:s0")])
    assert [r.permission for r in ruleset.rules] == ["read"]
    assert [r.rule.permission for r in ruleset.refused] == ["relabelto"]


def test_mcs_mismatch_is_skipped_not_granted():
    denial = avc("read", "system_u:object_r:container_file_t:s0:c3,c4")
    assert "c3, c4" in mcs_mismatch(denial)
    ruleset = build_ruleset([denial])
    assert ruleset.rules == () and ruleset.skipped[0].reason == "mcs constraint"
    # The target's categories within the source's: an ordinary TE denial.
    assert mcs_mismatch(avc("read", "system_u:object_r:user_home_t:s0:c1")) is None
    assert mcs_mismatch(avc("read", "system_u:object_r:user_home_t:s0:c0.c1023", source=C1.replace(
        "s0:c1,c2", "s0-s0:c0.c1023"))) is None
    # A single level with many categories, against a target with even more.
    message = mcs_mismatch(avc("read", "system_u:object_r:user_home_t:s0:c0.c1023"))
    assert "and 1014 more" in message


def test_granted_and_unknown_permissions_are_ignored():
    ruleset = build_ruleset([avc("read", "system_u:object_r:etc_t:s0", result="granted"),
                             avc("0x800000", "system_u:object_r:etc_t:s0", serial=2)])
    assert ruleset.rules == ()
    assert ruleset.skipped[0].reason == "unknown permission"


def test_per_workload_grouping():
    groups = rulesets_by_workload([("web", LOG[0]), ("db", LOG[4]), (None, LOG[5]), ("web", LOG[1])])
    assert list(groups) == ["db", "web", None]
    assert {r.permission for r in groups["web"].rules} == {"open", "read"}


def test_dotted_types_only_in_cil():
    denial = avc("read", "system_u:object_r:etc_t:s0", source="system_u:system_r:selinuxd.process:s0")
    ruleset = build_ruleset([denial])
    te = render_te("m", ruleset)
    assert "require" not in te and "#   allow selinuxd.process etc_t:file read;" in te
    assert "(allow process etc_t (file (read)))" in render_cil("m", ruleset)


@pytest.mark.parametrize("name", ["a", "mymod", "My_Module2", "x" * 100])
def test_good_module_names(name):
    assert validate_module_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "_abc", "a-b", "a.b", "a b", "../evil", "a/b", "é", "x" * 101,
                                  None, "mod\n"])
def test_bad_module_names(name):
    with pytest.raises(InvalidModuleName):
        validate_module_name(name)
    with pytest.raises(InvalidModuleName):
        generate(name, LOG)


KEYWORDS = ["allow", "type", "module", "require", "class", "role", "attribute", "typeattribute", "optional",
            "neverallow", "dontaudit", "auditallow", "bool", "if", "else", "self", "ALLOW", "type_transition"]


@pytest.mark.parametrize("name", KEYWORDS)
def test_policy_keywords_are_refused(name):
    with pytest.raises(InvalidModuleName, match="keyword of the SELinux policy language"):
        validate_module_name(name)


@pytest.mark.parametrize("name", ["Allow", "allowed", "my_type", "types_ok"])
def test_names_that_only_contain_a_keyword_are_fine(name):
    assert validate_module_name(name) == name


@pytest.mark.skipif(not shutil.which("checkmodule"), reason="checkmodule is not installed")
@pytest.mark.parametrize("name", ["allow", "require", "optional", "TYPE"])
def test_checkmodule_itself_refuses_keyword_names(tmp_path, name):
    # The premise of the keyword check: checkmodule cannot parse `module <keyword> 1.0;`.
    te = tmp_path / f"{name}.te"
    te.write_text(f"module {name} 1.0;\nrequire {{ type etc_t; }}\n")
    result = subprocess.run(["checkmodule", "-M", "-m", "-o", str(tmp_path / f"{name}.mod"), str(te)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "syntax error" in result.stderr


@pytest.mark.parametrize("name", ["base", "container", "unconfined", "sysadm", "staff", "kernel", "init",
                                  "selinux", "files", "devices", "domain", "corecommands", "userdomain", "virt",
                                  "docker", "permissivedomains", "sandbox", "base_container"])
def test_system_module_names_are_refused(name):
    with pytest.raises(InvalidModuleName, match="taken by a module of the system policy"):
        validate_module_name(name)
    with pytest.raises(InvalidModuleName):
        generate(name, LOG)


def test_unknown_format():
    with pytest.raises(InvalidInput):
        generate("m", LOG, ("xml",))


def test_empty_module_is_still_valid_text():
    assert render_te("m", build_ruleset([])) == "module m 1.0;\n"
    assert render_cil("m", build_ruleset([])) == "(block m\n    (blockinherit container)\n)\n"
