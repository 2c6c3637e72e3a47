"""The public surface for plugin authors: ``flowqd`` and ``flowqd.testing``, nothing else."""

from __future__ import annotations

from types import ModuleType

import flowqd
import flowqd.testing

FLOWQD = {
    "CredentialError",
    "Executor",
    "FlowValidationError",
    "FlowqdError",
    "NodeContext",
    "NodeError",
    "PluginError",
    "__version__",
    "hookimpl",
}
TESTING = {
    "Events",
    "FlowResult",
    "NodeFailed",
    "load_executors",
    "run_executor",
    "run_flow_document",
}


def test_flowqd_surface() -> None:
    assert set(flowqd.__all__) == FLOWQD
    for name in FLOWQD:
        assert getattr(flowqd, name) is not None
    # Submodules become attributes once imported; every other public name is in __all__.
    public = {
        name
        for name, value in vars(flowqd).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == FLOWQD - {"__version__"}


def test_testing_surface() -> None:
    assert set(flowqd.testing.__all__) == TESTING
    for name in TESTING:
        assert getattr(flowqd.testing, name) is not None


def test_errors_form_one_hierarchy() -> None:
    for name in ("CredentialError", "FlowValidationError", "NodeError", "PluginError"):
        assert issubclass(getattr(flowqd, name), flowqd.FlowqdError)
    assert issubclass(flowqd.testing.NodeFailed, flowqd.FlowqdError)
