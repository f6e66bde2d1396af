"""Benchmark of the Iris service against its peers (issue 4); `make bench` runs it."""
