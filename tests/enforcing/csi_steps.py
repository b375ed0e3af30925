"""The CSI steps the enforcing tests take (kubelet's calls, csi-driver-host-path behind the proxy), or a skip of
the module that imports them where they cannot run: Debian's own grpcio/protobuf are older than the checked-in
CSI stubs need, and the CI guest gets the host's copies (vm/disks.py)."""

import pytest

pytest.importorskip("grpc", reason="grpcio is not importable here (the CI guest gets the host's copy)")
try:
    from tests.root.csi_helpers import LABEL_A, LEVEL_A, LEVEL_B, REPO, mounts_at, running_shim  # noqa: F401
    from tests.root.hostpath_driver import (SEED, label_of, proxy_in_front_of_hostpath,  # noqa: F401
                                            published_record, stage_and_publish, unpublish_unstage_delete)
except ImportError as err:  # protobuf older than the checked-in stubs need
    pytest.skip(f"the CSI stubs do not import here: {err}", allow_module_level=True)
