"""Benchmarks, run on demand and never by the tests."""
