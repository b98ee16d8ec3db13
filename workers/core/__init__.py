"""The contract both processes share: settings, logging, keys, events, the job contract, errors, Redis
clients and timelines. Imports nothing else of ``workers``."""
