"""Kiban and Kompliant clients and their shared HTTP plumbing."""
