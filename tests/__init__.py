"""The test suite; its packages mirror the source tree."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's top folder."""
