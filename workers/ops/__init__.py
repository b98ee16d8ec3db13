"""Operator tools: status, checks, rendering, the settings reference and the CLI."""
