"""The one exception hierarchy of flowqd.

Every error says what went wrong and what to do about it. Executor failures
are not exceptions that escape the daemon: they are recorded on the job.
"""

from __future__ import annotations

from typing import Any


class FlowqdError(Exception):
    """Base of every error flowqd raises on purpose."""


class ConfigError(FlowqdError):
    """Raised when configuration is unusable.

    ``problems`` holds one line per problem, each naming the source (file or
    environment variable), the key path and what was expected. Fix the named
    settings and start again.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BrokerUnavailable(FlowqdError):
    """Raised when the broker (Redis) cannot be reached or did not answer in time.

    Check that Redis runs at the configured ``redis.url`` (or ``REDIS_URL``)
    and is reachable from this host; flowqd retries by itself once it is back.
    """


class NotReplicated(BrokerUnavailable):
    """Raised when fewer replicas than ``redis.wait_replicas`` acknowledged a
    write in ``redis.wait_timeout_s``. The write is on the primary (``replies``
    holds its answers) but may be lost if the primary fails now."""

    def __init__(self, message: str, replies: list[Any]) -> None:
        super().__init__(message)
        self.replies = replies


class RedisReplyError(FlowqdError):
    """Raised when Redis answers a command with an error reply.

    The message is Redis's own; it usually means a key holds the wrong type or
    a script failed, which points at a bug or a foreign writer in flowqd's keys.
    """


class RedisCommandRefused(BrokerUnavailable, RedisReplyError):
    """Raised when Redis forbids a command flowqd needs (an ACL, or a managed
    service that renamed or removed it). The message names the command.

    A BrokerUnavailable too: the command did not run, the API answers 503 with
    the message, a worker says it on /readyz and retries, so fixing the ACL
    (``ACL SETUSER``) needs no restart."""


class PluginError(FlowqdError):
    """Raised at start-up when a plugin cannot be loaded or conflicts with another.

    The message names the plugin; fix it, or turn it off with ``plugins.disable``.
    """


class FlowValidationError(FlowqdError):
    """Raised when a flow document is invalid.

    ``problems`` lists every problem found, each as ``(json_path, message)``.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


class CredentialError(FlowqdError):
    """Raised when a credential is missing or cannot be decrypted.

    A decryption failure means main and workers do not share
    ``security.secret_key``: give every process the same key.
    """


class NodeError(FlowqdError):
    """Raised by an executor to fail its node with a message meant for people.

    The runner records the message on the job (and its traceback in the log
    and the job record only). Say what the remote side or the input did, and
    what to change: ``"LLM server answered HTTP 401: check the credential"``.
    Any other exception also fails the node, with its type name in the message.
    """


class ProcessError(FlowqdError):
    """Raised at start-up when an extra API process (``server.processes``) fails to start.

    Its own log lines, just before this error in the same log, say why; fix
    that, or set ``server.processes = 1``.
    """
