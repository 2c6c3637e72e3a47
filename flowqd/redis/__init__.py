"""The trio Redis client: the only code in flowqd that talks to Redis.

Built on trio streams and hiredis (its reply parser and ``pack_command``).
``open_redis`` owns a pool of connections; blocking commands and pub/sub get
connections of their own (``Redis.dedicated``, ``Redis.subscribe``).
"""

from flowqd.backoff import Backoff as Backoff
from flowqd.redis._client import Dedicated as Dedicated
from flowqd.redis._client import Redis as Redis
from flowqd.redis._client import RedisStatistics as RedisStatistics
from flowqd.redis._client import open_redis as open_redis
from flowqd.redis._connection import Connection as Connection
from flowqd.redis._pubsub import Subscription as Subscription
from flowqd.redis._script import Arg as Arg
from flowqd.redis._script import Packed as Packed
from flowqd.redis._script import Script as Script
from flowqd.redis._script import ScriptCall as ScriptCall
from flowqd.redis._script import bulk as bulk
from flowqd.redis._url import Target as Target
from flowqd.redis._url import parse_target as parse_target

__all__ = [
    "Arg",
    "Backoff",
    "Connection",
    "Dedicated",
    "Packed",
    "Redis",
    "RedisStatistics",
    "Script",
    "ScriptCall",
    "Subscription",
    "Target",
    "bulk",
    "open_redis",
    "parse_target",
]
