"""Flows: documents, validation, the versioned store and the runner."""

from flowqd.flows.model import CompiledFlow as CompiledFlow
from flowqd.flows.model import CompiledNode as CompiledNode
from flowqd.flows.model import FlowResult as FlowResult
from flowqd.flows.model import NodeFailed as NodeFailed
from flowqd.flows.model import NodeSource as NodeSource
from flowqd.flows.runner import run_flow as run_flow
from flowqd.flows.store import FlowStore as FlowStore
from flowqd.flows.store import parse_flow_file as parse_flow_file
from flowqd.flows.validate import compile_flow as compile_flow
