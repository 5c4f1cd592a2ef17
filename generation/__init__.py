"""Text-to-image generation, in four packages that follow the process boundaries:

- `generation.protocol` — torch-free: the request/result contract, the queue messages, the JetStream client and the
  embedded nats-server launcher. The bot and the worker both import it.
- `generation.engine` — diffusers: loading models, running them, callbacks, schedulers, PNG metadata, the timeline and
  the `python -m generation` command line.
- `generation.worker` — the worker process (`python -m generation.worker`), its settings and the fake engine.
- `generation.shapes` — the shipped default model's data set, architecture, training, classifier and evaluation.

Importing this package is cheap (no torch). No part of it imports discord or the database.
"""

from pathlib import Path

#: The shipped default model (the shapes model; see docs/model.md).
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"
