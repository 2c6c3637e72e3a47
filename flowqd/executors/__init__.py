"""Built-in executors, each an ordinary hookimpl module (see ``flowqd.plugins``).

``base`` holds the types every executor uses; plugin authors import them
from ``flowqd``, not from here.
"""
