"""Denials → SELinux allow rules → a policy module, as `.te` text (audit2allow style) or CIL (udica style).

Pure code. Rules are the set of (source type, target type, class, permission) seen in denials, so MCS levels
play no part (sepolgen's AccessVectorSet and SPO's recorder key on types the same way). The output is sorted
so that the same rules always give the same bytes: SPO issue #1842 shows what an unordered writer costs (a
module that "drifts" on every reconcile and is reinstalled forever).

Some denials are not turned into rules:

- granted records (auditallow) and permissions the kernel printed as bare bits (`0x...`);
- MCS mismatches: the target has categories the source does not hold. That is a constraint violation (a
  pod touching another pod's files, or a mislabelled volume) that no allow rule can fix, and granting the
  type access would hide it; they are reported as `skipped`;
- the denylist, after SPO's built-in one: targets `kernel_t kmem_t security_t shadow_t`, the classes
  `security system`, the permissions `load_policy mac_admin mounton relabelfrom relabelto setbool
  setenforce setsecparam`, and the capability classes unless `allow_capabilities` is set. Each refused rule
  is reported with its reason.

Two output forms:

- `.te` grants the denied access to the *source types as they are* (`allow container_t foo_t:file read;`),
  exactly what audit2allow writes. It changes every process in that domain, so every pod running as
  `container_t` gains the access.
- CIL writes a new domain `<name>.process` that inherits container-selinux's `container` template (the
  udica and security-profiles-operator form) and grants the access to it only; a pod opts in with
  `seLinuxOptions.type: <name>.process`. Installing it needs the template (`base_container.cil`) loaded.
  Access to the source domain itself becomes `process` (udica's `self`).

Module names follow `^[A-Za-z][A-Za-z0-9_]*$`: a letter first, then letters, digits and underscores. That is
stricter than checkmodule, on purpose: the name is also a file base name, a CIL block name and a semodule
argument, and checkmodule refuses a module whose name differs from its output file's base name. Two kinds of
names are refused besides:

- keywords of the policy language (checkpolicy's scanner, policy_scan.l, in lower or upper case, plus
  `self`): `module allow 1.0;` is a syntax error for checkmodule, and `self` means the source type in a rule
  and is reserved in CIL;
- names of modules that distributions ship (refpolicy, Fedora's policy, container-selinux). semodule uses
  the highest priority of a name, so our module at 350 would replace the system's `container` or `kernel`
  module and take the rest of its policy with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from agent.errors import InvalidInput, InvalidModuleName

MODULE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
MAX_MODULE_NAME = 100
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CIL_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")  # CIL names may address blocks: selinuxd.process

DENIED_TYPES = frozenset({"kernel_t", "kmem_t", "security_t", "shadow_t"})
DENIED_CLASSES = frozenset({"security", "system"})
DENIED_PERMISSIONS = frozenset({"load_policy", "mac_admin", "mounton", "relabelfrom", "relabelto", "setbool",
                                "setenforce", "setsecparam"})
CAPABILITY_CLASSES = frozenset({"capability", "capability2", "cap_userns", "cap2_userns"})

# checkpolicy/policy_scan.l (SELinux userspace 3.x): each is matched in lower or upper case as a token.
POLICY_KEYWORDS = frozenset("""
    alias allow allowxperm and attribute attribute_role auditallow auditallowxperm auditdeny bool category class
    clone common constrain default_range default_role default_type default_user devicetreecon dom domby
    dominance dontaudit dontauditxperm else eq expandattribute false fs_use_task fs_use_trans fs_use_xattr
    fscon genfscon glblub h1 h2 high ibendportcon ibpkeycon if incomp inherits iomemcon ioportcon l1 l2 level low
    mlsconstrain mlsvalidatetrans module netifcon neverallow neverallowxperm nodecon not optional or
    pcidevicecon permissive pirqcon policycap portcon r1 r2 r3 range range_transition require role
    role_transition roleattribute roles sameuser sensitivity sid source t1 t2 t3 target true tunable type
    type_change type_member type_transition typealias typeattribute typebounds types u1 u2 u3 user
    validatetrans xor
""".split()) | {"self"}

# Modules of the base policies and container-selinux that a local module must never shadow.
SYSTEM_MODULES = frozenset("""
    base base_container container corecommands corenetwork devices docker domain files init kernel libraries
    logging mcs miscfiles mls permissivedomains sandbox selinux selinuxutil staff sysadm systemd unconfined
    unprivuser user userdomain virt
""".split())


def validate_module_name(name) -> str:
    """The name unchanged, or InvalidModuleName saying why checkmodule/semodule or a path would refuse it."""
    if not isinstance(name, str) or not name:
        raise InvalidModuleName("module name must be a non-empty string")
    if len(name) > MAX_MODULE_NAME:
        raise InvalidModuleName(f"module name {name[:40]!r}... is longer than {MAX_MODULE_NAME} characters")
    if not MODULE_NAME.match(name):
        raise InvalidModuleName(
            f"invalid module name {name!r}: use a letter followed by letters, digits or '_' "
            "(no '-', '.', '/' or spaces; the name is also the file name and the CIL block name)")
    if name.lower() in POLICY_KEYWORDS and (name.islower() or name.isupper()):
        raise InvalidModuleName(f"invalid module name {name!r}: it is a keyword of the SELinux policy language, "
                                "which checkmodule cannot take as a module name")
    if name in SYSTEM_MODULES:
        raise InvalidModuleName(
            f"module name {name!r} is taken by a module of the system policy (refpolicy, the distribution's "
            "policy or container-selinux); semodule would use ours in its place and break the system policy, so "
            "pick a name of your own, e.g. with your workload's name in it")
    return name


@dataclass(frozen=True, order=True)
class Rule:
    """One permission one source type needs on one target type and class."""

    source: str
    target: str
    tclass: str
    permission: str


@dataclass(frozen=True)
class Refusal:
    rule: Rule
    reason: str


@dataclass(frozen=True)
class Skip:
    """A denial that produced no rule, and why (shown to the user, never silently dropped)."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Denylist:
    types: frozenset = DENIED_TYPES
    classes: frozenset = DENIED_CLASSES
    permissions: frozenset = DENIED_PERMISSIONS
    allow_capabilities: bool = False

    def refuse(self, rule: Rule) -> str | None:
        """Why a rule must not be granted, or None."""
        if rule.target in self.types:
            return f"target type {rule.target} is on the denylist"
        if rule.source in self.types:
            return f"source type {rule.source} is on the denylist"
        if rule.tclass in self.classes:
            return f"class {rule.tclass} is on the denylist"
        if rule.permission in self.permissions:
            return f"permission {rule.permission} is on the denylist"
        if rule.tclass in CAPABILITY_CLASSES and not self.allow_capabilities:
            return f"class {rule.tclass} grants a capability; pass --allow-capabilities to include it"
        return None


@dataclass(frozen=True)
class RuleSet:
    """Rules to grant, rules refused by the denylist, and denials skipped, all sorted."""

    rules: tuple[Rule, ...] = ()
    refused: tuple[Refusal, ...] = ()
    skipped: tuple[Skip, ...] = ()

    def to_json(self) -> dict:
        return {
            "rules": [rule.__dict__ for rule in self.rules],
            "refused": [{"rule": r.rule.__dict__, "reason": r.reason} for r in self.refused],
            "skipped": [{"reason": s.reason, "detail": s.detail} for s in self.skipped],
        }


def _categories(level: str | None) -> set[str] | None:
    """The category names of a canonical level's high part (None when there is no level). The MCS
    constraints compare high levels (`h1 dom h2`), so a ranged source such as s0-s0:c0.c1023 holds all."""
    if level is None:
        return None
    high = level.rsplit("-", 1)[-1]
    _, _, cats = high.partition(":")
    out: set[str] = set()
    for item in cats.split(",") if cats else ():
        first, dot, last = item.partition(".")
        if dot:
            out.update(f"c{n}" for n in range(int(first[1:]), int(last[1:]) + 1))
        else:
            out.add(first)
    return out


def mcs_mismatch(denial) -> str | None:
    """A description when the target holds categories the source lacks (an MCS constraint denial)."""
    source, target = _categories(denial.source_level), _categories(denial.target_level)
    if source is None or target is None:
        return None
    missing = sorted(target - source, key=lambda c: int(c[1:]))
    if not missing:
        return None
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"{denial.source_type} at {denial.source_level} cannot reach {denial.target_type} at "
            f"{denial.target_level} (categories {shown} are not the source's): an MCS constraint, "
            "not a missing allow rule")


def build_ruleset(denials: Iterable, denylist: Denylist = Denylist()) -> RuleSet:
    """Deduplicated, sorted rules for a set of denials (anything with the Denial attributes)."""
    rules: set[Rule] = set()
    refused: dict[Rule, str] = {}
    skipped: set[Skip] = set()
    for denial in denials:
        if not denial.denied:
            continue
        source, target, tclass = denial.source_type, denial.target_type, denial.tclass
        if not source or not target or not _CIL_IDENT.match(source) or not _CIL_IDENT.match(target) \
                or not _IDENT.match(tclass or ""):
            skipped.add(Skip("unreadable context", f"{denial.scontext} -> {denial.tcontext} ({denial.tclass})"))
            continue
        mismatch = mcs_mismatch(denial)
        if mismatch:
            skipped.add(Skip("mcs constraint", mismatch))
            continue
        for permission in denial.permissions:
            if not _IDENT.match(permission):
                skipped.add(Skip("unknown permission", f"{permission} on {tclass} (the policy has no name for it)"))
                continue
            rule = Rule(source, target, tclass, permission)
            why = denylist.refuse(rule)
            if why:
                refused[rule] = why
            else:
                rules.add(rule)
    return RuleSet(tuple(sorted(rules)), tuple(Refusal(r, refused[r]) for r in sorted(refused)),
                   tuple(sorted(skipped, key=lambda s: (s.reason, s.detail))))


def rulesets_by_workload(attributed: Iterable, denylist: Denylist = Denylist()) -> dict[str | None, RuleSet]:
    """One RuleSet per workload key; items are (workload key or None, denial) pairs."""
    groups: dict[str | None, list] = {}
    for key, denial in attributed:
        groups.setdefault(key, []).append(denial)
    return {key: build_ruleset(items, denylist) for key, items in
            sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))}


def _grouped(rules: Iterable[Rule]) -> dict[tuple[str, str, str], list[str]]:
    out: dict[tuple[str, str, str], list[str]] = {}
    for rule in sorted(rules):
        out.setdefault((rule.source, rule.target, rule.tclass), []).append(rule.permission)
    return out


def _perm_set(perms: Iterable[str]) -> str:
    perms = sorted(set(perms))
    return perms[0] if len(perms) == 1 else "{ " + " ".join(perms) + " }"


def render_te(name: str, ruleset: RuleSet, version: str = "1.0") -> str:
    """A `.te` module in the form `audit2allow -m NAME` prints. Types with a '.' (CIL block names) cannot be
    written in this language; such rules are listed as comments."""
    validate_module_name(name)
    writable = [r for r in ruleset.rules if _IDENT.match(r.source) and _IDENT.match(r.target)]
    unwritable = [r for r in ruleset.rules if r not in writable]
    types = sorted({r.source for r in writable} | {r.target for r in writable})
    classes: dict[str, set[str]] = {}
    for rule in writable:
        classes.setdefault(rule.tclass, set()).add(rule.permission)
    lines = [f"module {name} {version};", ""]
    if writable:
        lines.append("require {")
        lines.extend(f"\ttype {t};" for t in types)
        lines.extend(f"\tclass {c} {_perm_set(p)};" for c, p in sorted(classes.items()))
        lines.extend(["}", ""])
    current = None
    for (source, target, tclass), perms in _grouped(writable).items():
        if source != current:
            if current is not None:
                lines.append("")
            lines.append(f"#============= {source} ==============")
            current = source
        shown = "self" if target == source else target
        lines.append(f"allow {source} {shown}:{tclass} {_perm_set(perms)};")
    if unwritable:
        lines.extend(["", "# Not expressible in .te (CIL names); see the .cil output:"])
        for (source, target, tclass), perms in _grouped(unwritable).items():
            lines.append(f"#   allow {source} {target}:{tclass} {_perm_set(perms)};")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_cil(name: str, ruleset: RuleSet, inherit: tuple[str, ...] = ("container",),
               permissive: bool = False) -> str:
    """A CIL block `(block NAME (blockinherit container) (allow process T (CLASS (PERMS))) ...)`.

    Every rule's source becomes the block's own domain `process`, whatever domain the denial came from;
    the pod then runs as `NAME.process`. A target equal to a source becomes `process` too.
    """
    validate_module_name(name)
    sources = {rule.source for rule in ruleset.rules}
    lines = [f"(block {name}"]
    lines.extend(f"    (blockinherit {template})" for template in inherit)
    if permissive:
        lines.append("    (typepermissive process)")
    merged: dict[tuple[str, str], set[str]] = {}
    for rule in ruleset.rules:
        target = "process" if rule.target in sources else rule.target
        merged.setdefault((target, rule.tclass), set()).add(rule.permission)
    for (target, tclass), perms in sorted(merged.items()):
        lines.append(f"    (allow process {target} ({tclass} ({' '.join(sorted(perms))})))")
    lines.append(")")
    if sources:
        lines.insert(0, f";; rules from denials of: {' '.join(sorted(sources))}")
    return "\n".join(lines) + "\n"


# The comment that marks a file as this command's own output, which a later run may write again
# (agent.sepolicy.outfiles refuses to overwrite anything else without --force).
GENERATED_MARK = "Generated by selinux-mount-agent policy generate; written again by the next run, edit a copy"


def mark_te(text: str) -> str:
    """The mark as the second line: the `module` statement stays first, as audit2allow writes it."""
    first, _, rest = text.partition("\n")
    return f"{first}\n# {GENERATED_MARK}\n{rest}"


def mark_cil(text: str) -> str:
    return f";; {GENERATED_MARK}\n{text}"


def is_generated(head: bytes) -> bool:
    """Whether the first bytes of a .te or .cil are this command's output (its mark in the first two lines)."""
    lines = head.decode("utf-8", "replace").splitlines()[:2]
    return f"# {GENERATED_MARK}" in lines or f";; {GENERATED_MARK}" in lines


@dataclass(frozen=True)
class Module:
    """A generated module: its name, rules, and the texts of the requested forms."""

    name: str
    ruleset: RuleSet
    te: str | None = None
    cil: str | None = None


def generate(name: str, denials: Iterable, formats: tuple[str, ...] = ("te",),
             denylist: Denylist = Denylist()) -> Module:
    """Denials → Module with the requested texts (`te`, `cil`), each carrying the generated-file mark."""
    validate_module_name(name)
    unknown = set(formats) - {"te", "cil"}
    if unknown:
        raise InvalidInput(f"unknown policy format(s): {', '.join(sorted(unknown))}")
    ruleset = build_ruleset(denials, denylist)
    return Module(name, ruleset,
                  te=mark_te(render_te(name, ruleset)) if "te" in formats else None,
                  cil=mark_cil(render_cil(name, ruleset)) if "cil" in formats else None)
