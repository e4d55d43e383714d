"""Chaos tests: real masters under load while processes, Redis and the clock misbehave."""
