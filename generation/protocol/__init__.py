"""What crosses between the bot and the workers: the request/result contract, the queue messages, the JetStream
client and the embedded nats-server launcher.

This package is imported by both processes and must stay cheap and safe to import from the bot: it imports neither
torch, diffusers nor transformers, nor discord nor the database (tests/generation/protocol/test_imports.py).
"""
