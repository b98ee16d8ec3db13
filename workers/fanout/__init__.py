"""Event fan-out: the publisher, consumer groups and signed HTTP webhooks."""
