"""The operator console: server-rendered pages on the internal listener (``/console``).

``console_routes(settings)`` is what ``workfloo-bridge serve`` mounts on the receiver's internal listener
(the receiver itself never imports ``workers.ops``). The pages: ``app``; reading what they show:
``views``.
"""

from workers.ops.console.app import MOUNT_PATH, console_app, console_routes

__all__ = ["MOUNT_PATH", "console_app", "console_routes"]
