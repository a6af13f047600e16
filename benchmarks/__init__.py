"""Serving benchmarks: `python -m benchmarks.serve` (needs `wrk` on PATH)."""
