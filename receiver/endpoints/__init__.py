"""The receiver's endpoints: Kiban callbacks, internal commands and the timeline."""
