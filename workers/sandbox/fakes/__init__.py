"""Fake Kiban and Kompliant servers (Starlette apps) for tests, the demo and benchmarks.

``workers.sandbox.fakes.kiban.create_app`` / ``workers.sandbox.fakes.kompliant.create_app``; both expose
their state on ``app.state.fake`` and share the fault knobs of ``workers.sandbox.fakes.faults``.
"""
