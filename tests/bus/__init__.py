"""Tests of tidings.bus: the bus contract on the memory bus and the Redis bus."""
