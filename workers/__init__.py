"""Everything behind the queue: job functions, vendor clients, fan-out, settings and the shared event model.

This package never imports ``receiver``.
"""

__version__ = "0.1.0"
