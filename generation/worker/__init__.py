"""The worker process: takes jobs from the queue, runs them on an engine, publishes progress and outcomes.

    python -m generation.worker --nats-url nats://host:4222 --model path/to/model
    python -m generation.worker --model sd15=path/to/sd15 --model org/name@revision --max-loaded 1   # several

`generation.worker.worker` holds the `Worker`; `generation.worker.fake_engine` the engine stand-in that tests and
benchmarks use. Neither imports torch until a real engine is loaded.
"""
