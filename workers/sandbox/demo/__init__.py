"""``workfloo-bridge demo``: the whole bridge on an embedded stack, with progress and a summary."""
