"""Side-by-side benchmark harness: ``python -m loadtests.bench`` (see docs/loadtests.md)."""
