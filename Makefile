# Entry points for people and CI. `make run` and `make test` work on a fresh Debian/Ubuntu machine:
# they install what they need (apt packages when run as root or with sudo, a venv, pip packages).

PYTHON_SYSTEM ?= /usr/bin/python3
VENV          ?= .venv
PY            := $(VENV)/bin/python
# Beyond the build: the policy tools that compile generated modules (checkpolicy, semodule-utils), mkfs.xfs for
# the built-in driver's xfs volumes, ruby and vagrant to check the Vagrantfile (syntax, and `vagrant validate`),
# libyaml-dev for the compiled YAML reader (agent/parsing/_yaml.c).
APT_PACKAGES  := python3-venv python3-dev python3-selinux gcc make checkpolicy semodule-utils xfsprogs ruby vagrant \
                 libyaml-dev
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP         := $(VENV)/.installed

.PHONY: deps run explain test test-unit vm-test vm-bench bench clean

# Debian's python3-selinux holds the libselinux bindings; a --system-site-packages venv built from
# the system interpreter sees them, so no bindings need compiling.
$(STAMP): pyproject.toml $(wildcard setup.py) Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	$(PYTHON_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

deps: $(STAMP)

# The main job with its embedded defaults: the node agent (built-in CSI driver on ./state/csi.sock,
# metrics and health on http://127.0.0.1:9808). Ctrl-C stops it.
run: $(STAMP)
	$(VENV)/bin/selinux-mount-agent run

# What kubelet would do with each volume of each pod of the bundled example cluster.
explain: $(STAMP)
	$(VENV)/bin/selinux-mount-agent explain -f examples/cluster.yaml

# The architecture's contracts first (layers, the pure core, the composition root, no cycles: pyproject.toml's
# [tool.importlinter], docs/architecture.md), then the suite.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# tests/enforcing inside a Debian guest whose kernel enforces SELinux (this host's kernel has none).
# Builds and caches the guest image on first use; docs/enforcing-vm.md. Extra options: make vm-test VM_ARGS=...
# The venv comes first: the guest takes grpcio, protobuf, pyroute2 and udica's templates from it (vm/disks.py).
# VM_POLICY picks the guest's policy: c9s (default) or f40 (targeted + container-selinux), debian (refpolicy).
VM_POLICY     ?= c9s
vm-test: $(STAMP)
	$(SUDO) vm/run-enforcing-tests --policy $(VM_POLICY) $(VM_ARGS)

# The relabel benchmark in the same guest (not part of vm-test: ~15 min under TCG), then on the host on the same
# trees; writes the guest section of docs/relabel-benchmark.md. Extra options: make vm-bench BENCH_ARGS=...
vm-bench: $(STAMP)
	$(SUDO) $(PY) bench/relabel.py --vm --policy $(VM_POLICY) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
