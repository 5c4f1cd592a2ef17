"""Helpers shared by the tests and benchmarks: tiny models built in code, nats-server and worker processes, the
fake Discord, the bot as a child process, and the hardening kits. Nothing here is a test."""
