"""Simulated devices and fleets that run the real agent code, for tests, demos and benchmarks."""
