"""Dispatch: the bot's side of the NATS JetStream job queue.

- `bot.dispatch.dispatcher`: `Dispatcher`, the front the bot talks to (start, publish, cancel, reconcile, close);
- `bot.dispatch.registry`: `WorkerRegistry`, the live workers, the models they serve (`ServedModel`: a worker's card,
  who serves it, how busy) and when unserved jobs must fail;
- `bot.dispatch.feeder`: `Feeder`, fills the stream's window from the database in fair order;
- `bot.dispatch.recorder`: `OutcomeRecorder`, records starts and outcomes, exactly once;
- `bot.dispatch.events`: `JobEvents`, `JobEvent` and the `JobListener` protocol, the fan-out of what happens to jobs;
- `bot.dispatch.local`: the default mode's embedded nats-server and local worker process.

Imports no torch: only `generation.protocol.contract`, `generation.protocol.queue` and `generation.protocol.natsserver` from the generation side.
"""

from bot.dispatch.dispatcher import Dispatcher, ReconcileReport
from bot.dispatch.events import JobEvent, JobEvents, JobListener, NoListener
from bot.dispatch.feeder import Feeder
from bot.dispatch.local import LocalWorker, open_dispatcher
from bot.dispatch.recorder import OutcomeRecorder
from bot.dispatch.registry import ServedModel, WorkerRegistry

__all__ = [
    "Dispatcher",
    "Feeder",
    "JobEvent",
    "JobEvents",
    "JobListener",
    "LocalWorker",
    "NoListener",
    "OutcomeRecorder",
    "ReconcileReport",
    "ServedModel",
    "WorkerRegistry",
    "open_dispatcher",
]
