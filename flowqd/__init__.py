"""flowqd: queue-mode flow execution daemon.

The names below are the public surface for plugin authors (with
``flowqd.testing``); every other module is flowqd's own and may change.
"""

from flowqd._version import __version__ as __version__
from flowqd.errors import CredentialError as CredentialError
from flowqd.errors import FlowqdError as FlowqdError
from flowqd.errors import FlowValidationError as FlowValidationError
from flowqd.errors import NodeError as NodeError
from flowqd.errors import PluginError as PluginError
from flowqd.executors.base import Executor as Executor
from flowqd.executors.base import NodeContext as NodeContext
from flowqd.hookspecs import hookimpl as hookimpl

__all__ = [
    "CredentialError",
    "Executor",
    "FlowValidationError",
    "FlowqdError",
    "NodeContext",
    "NodeError",
    "PluginError",
    "__version__",
    "hookimpl",
]
