"""Fakes, the process stack (``stack``), one poll loop (``wait``), the demo and an embedded Redis for tests,
the demo and benchmarks. Never imported by production code."""
