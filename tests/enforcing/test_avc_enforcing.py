"""AVC pipeline end to end on an enforcing SELinux host: provoke denials from a confined process, see them
arrive over netlink attributed by MCS level to the right pod, generate + build + install a module, and see
the access succeed.

Two files are read from `container_t:s0:c1,c2` (the "pod" `enforce-test/reader`):

- one at `container_file_t:s0:c3,c4`: another pod's categories. That is an MCS constraint violation; no
  allow rule can fix it, and the generator must say so instead of writing a rule;
- one at `user_home_t:s0`: a type the container domain has no TE access to, at a level it dominates. Here
  the audit2allow loop works: denials → module → install → retry, until the read succeeds, and each round the
  store's copy of the module is the build just installed, not the previous one. The same denials
  also become a CIL domain in the udica form, installed with container-selinux's `base_container.cil`
  template (the guest's own from container-selinux on the c9s and f40 flavours, udica 0.2.2's on debian), and
  a process of that domain reads the file. The guest's test module (vm/policy/smatest.te) lets the tests' domain
  (unconfined_service_t on c9s/f40, init_t on debian) start any container_domain from a container_file_t busybox; on debian, vm/policy/debian-shims.te declares
  svirt_sandbox_domain, which the template names and refpolicy lacks.

Needs root, an enforcing kernel, runcon/chcon, checkmodule, semodule_package and semodule. The module is
removed afterwards.
"""

import os
import queue
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.avc.attribution import Attributor
from agent.avc.netlink import AuditNetlinkSource
from agent.avc.poddir import PodRef
from agent.avc.watcher import AvcWatcher
from agent.errors import AuditUnavailable, PolicyBuildError
from agent.sepolicy.build import build_pp, install, installed_copy, installed_modules, remove
from agent.sepolicy.generate import build_ruleset, generate

CONTEXT = "system_u:system_r:container_t:s0:c1,c2"
POD = PodRef("enforce-test", "reader", "00000000-0000-0000-0000-0000000000e1", "s0:c1,c2", "reader")
MODULE = "selinux_mount_agent_avc_e2e"
PRIORITY = 350


def _why_not() -> str | None:
    try:
        enforce = Path("/sys/fs/selinux/enforce").read_text().strip()
    except OSError:
        return "/sys/fs/selinux/enforce is absent: SELinux is not enabled on this host"
    if enforce != "1":
        return "SELinux is not enforcing (/sys/fs/selinux/enforce is 0)"
    if os.geteuid() != 0:
        return "needs root to label files and install modules"
    for tool in ("runcon", "chcon", "checkmodule", "semodule_package", "semodule"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    return None


pytestmark = [pytest.mark.enforcing, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


POD_LEVEL = CONTEXT.split(":", 3)[3]


class Denials:
    """Watches the audit multicast group and keeps the denials attributed to our pod."""

    def __init__(self):
        self.queue = queue.Queue()
        self.source = AuditNetlinkSource(tick=0.05)
        try:
            self.source.open()
        except AuditUnavailable as err:
            pytest.skip(str(err))
        attributor = Attributor(levels={POD.level: POD})
        self.watcher = AvcWatcher(self.source, attributor=attributor, callback=self._keep)
        self.watcher.assembler.linger = 0.2

    def _keep(self, item):
        if item.denial.denied and item.denial.source_level == POD.level:
            self.queue.put(item)

    def __enter__(self):
        self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.watcher.stop()

    def collect(self, name: str, timeout: float = 5.0) -> list:
        """Denials up to and shortly after the first one naming `name`."""
        out, seen_name = [], False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if seen_name:
                    break
                continue
            out.append(item)
            if item.denial.name == name or (item.denial.path or "").endswith("/" + name):
                seen_name = True
                deadline = min(deadline, time.monotonic() + 1.0)
        return out


@pytest.fixture
def files(confined):
    directory = Path(tempfile.mkdtemp(prefix="avc-e2e-", dir="/var/tmp"))
    ours, theirs = directory / "ours.txt", directory / "theirs.txt"
    ours.write_text("ours\n")
    theirs.write_text("theirs\n")
    for path, label in ((directory, "system_u:object_r:container_file_t:s0"),
                        (ours, "system_u:object_r:user_home_t:s0"),
                        (theirs, "system_u:object_r:container_file_t:s0:c3,c4")):
        result = subprocess.run(["chcon", label, str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot label {path}: {result.stderr.strip()}")
    # The pod's process: a container_file_t entrypoint run as container_t at the pod's level (conftest).
    probe = confined.run(POD_LEVEL, "true")
    if probe.returncode != 0:
        pytest.skip(f"cannot run a process as {CONTEXT} here: {probe.stderr.strip()}")
    yield ours, theirs, (lambda *argv: confined.run(POD_LEVEL, *argv))
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def module_cleanup():
    yield
    if any(m.name == MODULE for m in installed_modules()):
        remove(MODULE, PRIORITY)


def test_cross_pod_read_is_attributed_and_not_turned_into_a_rule(files):
    _, theirs, as_pod = files
    with Denials() as denials:
        result = as_pod("cat", str(theirs))
        assert result.returncode != 0, "a container read another level's file"
        seen = denials.collect(theirs.name)
    assert seen, "no AVC arrived over netlink for the denied read"
    item = next(i for i in seen if i.denial.name == theirs.name)
    assert item.attribution.method == "mcs"
    assert (item.attribution.namespace, item.attribution.pod) == ("enforce-test", "reader")
    assert item.denial.target_level == "s0:c3,c4"
    ruleset = build_ruleset([i.denial for i in seen if i.denial.name == theirs.name])
    assert ruleset.rules == () and ruleset.skipped[0].reason == "mcs constraint"


def test_generate_build_install_until_the_read_succeeds(files, tmp_path, module_cleanup):
    ours, _, as_pod = files
    collected, builds = [], []
    with Denials() as denials:
        for _round in range(5):
            result = as_pod("cat", str(ours))
            if result.returncode == 0:
                break
            seen = denials.collect(ours.name)
            if not seen:
                pytest.skip("the read was refused without an AVC record (a dontaudit rule hides it)")
            assert all(i.attribution.pod == "reader" for i in seen)
            collected.extend(i.denial for i in seen)
            module = generate(MODULE, collected, ("te",))
            assert module.ruleset.rules, f"nothing to allow: {module.ruleset}"
            te = tmp_path / f"{MODULE}.te"
            te.write_text(module.te)
            pp = build_pp(te)
            builds.append(pp.read_bytes())
            installed = install(pp, priority=PRIORITY)
            assert installed.name == MODULE and installed.priority == PRIORITY
            # The comparison install relies on: the store's copy is the file just installed, byte for byte,
            # and not the previous round's build of the same name at the same priority.
            assert installed_copy(MODULE, PRIORITY) == builds[-1]
            assert len(builds) == 1 or builds[-1] != builds[-2]
        else:
            result = as_pod("cat", str(ours))
    assert result.returncode == 0, f"still denied after the module: {result.stderr}"
    assert result.stdout == "ours\n"
    assert any(r.target == "user_home_t" and r.permission == "read" for r in build_ruleset(collected).rules)
    with pytest.raises(PolicyBuildError, match="not installed at priority 999"):
        installed_copy(MODULE, 999)


CIL_MODULE = "smacilread"


def _udica_templates() -> Path | None:
    for candidate in (os.environ.get("SMA_UDICA_TEMPLATES"), "/usr/share/udica/templates"):
        if candidate and (Path(candidate) / "base_container.cil").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def cil_cleanup():
    yield
    installed = {m.name for m in installed_modules() if m.priority == PRIORITY}
    names = [name for name in (CIL_MODULE, "base_container") if name in installed]
    if names:  # one transaction: every semodule call rebuilds the whole policy, slow under emulation
        subprocess.run(["semodule", "-X", str(PRIORITY), *[arg for name in names for arg in ("-r", name)]],
                       capture_output=True, text=True, timeout=600)


def test_generated_cil_domain_installs_with_its_template_and_reads_the_file(files, confined, tmp_path,
                                                                           cil_cleanup):
    templates = _udica_templates()
    if templates is None:
        pytest.skip("no base_container.cil: install the test extras (udica 0.2.2) or container-selinux")
    ours, _, as_pod = files
    with Denials() as denials:
        result = as_pod("cat", str(ours))
        assert result.returncode != 0, "container_t read a user_home_t file before any module"
        seen = denials.collect(ours.name)
    if not seen:
        pytest.skip("the read was refused without an AVC record (a dontaudit rule hides it)")
    # The audit2allow loop again, now on the new domain: the kernel stops at the first refused permission
    # (read, then open), so each round may show one more.
    collected = [i.denial for i in seen]
    cil = tmp_path / f"{CIL_MODULE}.cil"
    for _round in range(4):
        module = generate(CIL_MODULE, collected, ("cil",))
        assert "(blockinherit container)" in module.cil and "user_home_t" in module.cil
        cil.write_text(module.cil)
        installed = install(cil, priority=PRIORITY, template_dir=str(templates))
        assert (installed.name, installed.kind) == (CIL_MODULE, "cil")
        with Denials() as denials:
            result = confined.run(POD_LEVEL, "cat", str(ours), domain=f"system_u:system_r:{CIL_MODULE}.process")
            missing = [] if result.returncode == 0 else denials.collect(ours.name)
        if result.returncode == 0 or not missing:
            break
        collected.extend(i.denial for i in missing)
    assert result.returncode == 0, (f"{CIL_MODULE}.process could not read the file: {result.stderr.strip()}; "
                                    f"denials: {[i.denial.to_json() for i in missing]}")
    assert result.stdout == "ours\n"
    assert any(m.name == "base_container" for m in installed_modules()), "the template was not installed"
