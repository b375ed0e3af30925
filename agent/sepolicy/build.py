"""Build and install generated policy modules: the edge around `agent.sepolicy.generate`.

- `.te` → `.pp`: `checkmodule -M -m -o NAME.mod NAME.te`, then `semodule_package -o NAME.pp -m NAME.mod`, the
  two steps `audit2allow -M` runs. `-M` builds for an MLS/MCS policy, which every container host uses.
- install: `semodule -X PRIORITY -i FILE` for `.pp` or `.cil`. The default priority 350 is the one the
  SELinux maintainers picked for container tooling (containers/selinuxd PR #32: 100 distribution, 200
  packaged, 300 setroubleshoot, 400 local default); using it keeps our modules apart from an
  administrator's local ones. A CIL module that inherits the `container` template also needs
  container-selinux's `base_container.cil`, which is installed beside it when present.
- semodule's exit status alone is not trusted (selinuxd issue #44 reports success on failure): the result is
  checked in `semodule -lfull`, and the copy the store now holds at that priority is extracted
  (`semodule -X PRIORITY -E NAME`) and compared byte for byte with the file given. A listing alone cannot
  tell an older module of the same name and priority from the new one, and the checksum `semodule -lfull -m`
  prints is not the file's SHA-256, so it cannot be compared with the file.

Tools are run with an argument list, never a shell, and every file name is derived from a validated module
name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidInput, PolicyBuildError, SELinuxUnavailable
from agent.sepolicy.outfiles import Output, write_outputs
from agent.sepolicy.generate import validate_module_name

DEFAULT_PRIORITY = 350
TEMPLATE_DIR = "/usr/share/udica/templates"
SELINUXFS = "/sys/fs/selinux"
_MODULE_LINE = re.compile(r"^\s*module\s+([A-Za-z][A-Za-z0-9_.\-]*)\s+[0-9][0-9.]*\s*;", re.MULTILINE)
_BLOCK_LINE = re.compile(r"^\s*\(block\s+([A-Za-z][A-Za-z0-9_]*)", re.MULTILINE)
_TIMEOUT = 300


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
                                       if os.access(p, os.X_OK)), None)
    if path is None:
        package = {"checkmodule": "checkpolicy", "semodule_package": "semodule-utils (Debian) or "
                   "policycoreutils (Fedora)", "semodule": "policycoreutils"}.get(name, name)
        raise PolicyBuildError(f"{name} is not installed (package {package})")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise PolicyBuildError(f"{Path(argv[0]).name} did not finish in {_TIMEOUT} s") from err
    except OSError as err:
        raise PolicyBuildError(f"cannot run {argv[0]}: {err.strerror}") from err
    return result


def _failure(result: subprocess.CompletedProcess, what: str) -> PolicyBuildError:
    detail = (result.stderr or result.stdout or "").strip().splitlines()
    shown = "; ".join(detail[-5:]) if detail else f"exit status {result.returncode}"
    return PolicyBuildError(f"{what} failed: {shown}")


def module_name_of(path: Path) -> str:
    """The module name declared in a .te (`module NAME 1.0;`) or .cil (`(block NAME`), checked against the
    file's base name, so checkmodule's "Module name X is different than the output base filename Y" cannot
    happen later."""
    stem = validate_module_name(path.stem)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}") from err
    _check_declared_name(text, path.suffix, stem, path)
    return stem


def _check_declared_name(text: str, suffix: str, stem: str, shown) -> None:
    if suffix == ".te":
        match = _MODULE_LINE.search(text)
        if not match:
            raise InvalidInput(f"{shown} has no 'module NAME VERSION;' line")
        if match.group(1) != stem:
            raise InvalidInput(f"{shown}: module name {match.group(1)!r} differs from the file base name {stem!r}; "
                               "checkmodule would refuse it")
    elif suffix == ".cil":
        match = _BLOCK_LINE.search(text)
        if match and match.group(1) != stem:
            raise InvalidInput(f"{shown}: block {match.group(1)!r} differs from the file base name {stem!r}")


def compile_pp(te_text: str, name: str) -> bytes:
    """The bytes of NAME.pp compiled from the text of NAME.te.

    checkmodule and semodule_package write their outputs by path name, following any link found there, so
    they run in a private directory of their own (mode 0700), never in an output directory others can write
    to; the caller places the result (agent.sepolicy.outfiles)."""
    validate_module_name(name)
    _check_declared_name(te_text, ".te", name, f"{name}.te")
    checkmodule, semodule_package = _tool("checkmodule"), _tool("semodule_package")
    with tempfile.TemporaryDirectory(prefix="sma-build-") as work:
        te, mod, pp = (Path(work) / f"{name}.{ext}" for ext in ("te", "mod", "pp"))
        te.write_text(te_text, encoding="utf-8")
        result = _run([checkmodule, "-M", "-m", "-o", str(mod), str(te)], cwd=Path(work))
        if result.returncode != 0 or not mod.exists():
            raise _failure(result, f"checkmodule {te.name}")
        result = _run([semodule_package, "-o", str(pp), "-m", str(mod)], cwd=Path(work))
        if result.returncode != 0 or not pp.exists():
            raise _failure(result, f"semodule_package {mod.name}")
        return pp.read_bytes()


def build_pp(te_path: Path, output_dir: Path | None = None) -> Path:
    """Compile NAME.te into NAME.pp (in `output_dir`, default beside the .te); returns the .pp path. An existing
    NAME.pp there is replaced, a link of that name too (never written through); no NAME.mod is left anywhere,
    as audit2allow -M leaves only .te and .pp."""
    te_path = Path(te_path)
    if te_path.suffix != ".te":
        raise InvalidInput(f"{te_path} is not a .te file")
    name = module_name_of(te_path)
    data = compile_pp(te_path.read_text(encoding="utf-8", errors="replace"), name)
    out = Path(output_dir) if output_dir else te_path.parent
    out.mkdir(parents=True, exist_ok=True)
    (pp,) = write_outputs(out, [Output(f"{name}.pp", data)], ours=lambda head: True, force=True)
    return pp


# --- installing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledModule:
    priority: int
    name: str
    kind: str
    disabled: bool = False


def parse_module_list(text: str) -> list[InstalledModule]:
    """`semodule -lfull` output (`350 name            pp`, `400 other cil disabled`)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            out.append(InstalledModule(int(parts[0]), parts[1], parts[2], "disabled" in parts[3:]))
    return out


def selinux_enabled(selinuxfs: str = SELINUXFS) -> bool:
    return os.path.exists(os.path.join(selinuxfs, "enforce"))


def installed_modules() -> list[InstalledModule]:
    result = _run([_tool("semodule"), "-lfull"])
    if result.returncode != 0:
        raise _failure(result, "semodule -lfull")
    return parse_module_list(result.stdout)


def install(path: Path, priority: int = DEFAULT_PRIORITY, selinuxfs: str = SELINUXFS,
            template_dir: str = TEMPLATE_DIR) -> InstalledModule:
    """Install a .pp or .cil module with semodule and confirm it is listed at that priority."""
    path = Path(path)
    if path.suffix not in (".pp", ".cil"):
        raise InvalidInput(f"{path}: install takes a .pp or .cil module (build a .te first with --build)")
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    if not 1 <= priority <= 999:
        raise InvalidInput(f"priority {priority} is outside semodule's range 1-999")
    name = module_name_of(path) if path.suffix == ".cil" else validate_module_name(path.stem)
    if not selinux_enabled(selinuxfs):
        raise SELinuxUnavailable(
            f"cannot install {path.name}: SELinux is not enabled on this host ({selinuxfs} is absent); "
            "copy the module to an SELinux node and run `semodule -X "
            f"{priority} -i {path.name}` there")
    semodule = _tool("semodule")
    argv = [semodule, "-X", str(priority), "-i", str(path)]
    if path.suffix == ".cil" and "blockinherit container" in path.read_text(errors="replace"):
        template = Path(template_dir) / "base_container.cil"
        if not any(m.name == "base_container" for m in installed_modules()):
            if not template.exists():
                raise PolicyBuildError(f"{path.name} inherits the 'container' template, which is neither "
                                       f"installed nor found at {template} (package container-selinux; "
                                       "elsewhere the pip package udica 0.2.2 ships it under "
                                       "site-packages/usr/share/udica/templates: pass that as --template-dir)")
            argv.append(str(template))
    result = _run(argv)
    if result.returncode != 0:
        raise _failure(result, f"semodule -i {path.name}")
    module = _listed(name, priority)
    if module is None:
        raise PolicyBuildError(f"semodule reported success but {name} is not listed at priority {priority} "
                               "in `semodule -lfull`")
    if _extract(name, priority) != path.read_bytes():
        raise PolicyBuildError(f"semodule reported success but the {name} module installed at priority "
                               f"{priority} is not {path} (an older copy is still in place)")
    return module


def _listed(name: str, priority: int) -> InstalledModule | None:
    return next((m for m in installed_modules() if m.name == name and m.priority == priority), None)


def installed_copy(name: str, priority: int) -> bytes:
    """The module file the store holds for `name` at `priority`, as installed (`semodule -X P -E NAME`)."""
    validate_module_name(name)
    # Asked for a priority that lacks the module, semodule 3.4 fails and later versions extract the highest
    # priority's copy instead; neither is the copy asked for, so the listing is checked first.
    if _listed(name, priority) is None:
        raise PolicyBuildError(f"{name} is not installed at priority {priority}")
    return _extract(name, priority)


def _extract(name: str, priority: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sma-extract-") as directory:
        result = _run([_tool("semodule"), "-X", str(priority), "-E", name], cwd=Path(directory))
        if result.returncode != 0:
            raise _failure(result, f"semodule -E {name}")
        extracted = [entry for entry in Path(directory).iterdir() if entry.is_file()]
        if len(extracted) != 1:
            raise PolicyBuildError(f"semodule -E {name} wrote {len(extracted)} files, expected one")
        return extracted[0].read_bytes()


def remove(name: str, priority: int = DEFAULT_PRIORITY) -> None:
    """Remove a module installed at `priority` (used to undo an install)."""
    validate_module_name(name)
    result = _run([_tool("semodule"), "-X", str(priority), "-r", name])
    if result.returncode != 0:
        raise _failure(result, f"semodule -r {name}")
