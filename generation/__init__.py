"""Text-to-image generation: the request/result contract, the diffusion engine, the default model and the worker.

Importing this package is cheap (no torch); the engine is loaded from `generation.engine` on demand.
This package never imports discord or the database.
"""

from generation.contract import (  # noqa: F401
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    ModelLimits,
    Progress,
    RequestError,
)
