"""Hook specifications: the contract between flowqd and its plugins.

Hooks are synchronous (pluggy cannot await); those that give flowqd work to
do return async callables. Every hook is prefixed ``flowqd_``. Implement one
with ``@flowqd.hookimpl`` on a module-level function or a method of an object
you register.
"""

from __future__ import annotations

import pluggy

from flowqd.executors.base import Executor

hookspec = pluggy.HookspecMarker("flowqd")
hookimpl = pluggy.HookimplMarker("flowqd")


# -------------------------------------------------------------------------
# Start-up: node types
# -------------------------------------------------------------------------


@hookspec
def flowqd_executors() -> list[Executor]:  # type: ignore[empty-body]
    """Return the node types (executors) this plugin provides.

    Called once per process at start-up, after every plugin is loaded. Each
    ``Executor`` names its node type, the attrs class its ``params`` are
    checked against, its async ``run(ctx)`` function and a one-line
    description. Flows are validated against the collected executors when
    they are registered.

    :return: a list of ``flowqd.Executor`` (an empty list is fine). The lists
        of all plugins are merged; a type name returned by two plugins stops
        start-up with a ``flowqd.PluginError`` naming both.
    """
