"""flowqd: queue-mode flow execution daemon."""

from flowqd._version import __version__ as __version__

