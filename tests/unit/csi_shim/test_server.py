"""csi_shim/server.py: the one place errors become status codes, and what runs after a call."""


def test_a_failing_level_update_does_not_fail_the_csi_call():
    """The shim's on_publish runs after publish and unpublish only; its failure is logged, and the call's
    metrics are still recorded."""
    import grpc

    from csi_shim.server import ErrorMapping

    seen, calls = [], []

    class Metrics:
        def observe_csi(self, method, code, seconds):
            seen.append(method)

    def broken():
        calls.append(1)
        raise RuntimeError("bug")

    mapping = ErrorMapping(Metrics(), "x", on_publish=broken)
    for method in ("NodePublishVolume", "NodeGetCapabilities", "NodeUnpublishVolume"):
        mapping._record(method, None, grpc.StatusCode.OK, None, 0.0)
    assert seen == ["NodePublishVolume", "NodeGetCapabilities", "NodeUnpublishVolume"] and len(calls) == 2
