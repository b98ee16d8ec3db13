"""Fake Kiban and Kompliant servers (Starlette apps) for tests, the demo and benchmarks.

``workers.fakes.kiban.create_app`` / ``workers.fakes.kompliant.create_app``; both expose their state on
``app.state.fake`` and share the fault knobs of ``workers.fakes.faults``.
"""
