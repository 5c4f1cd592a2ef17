"""Dispatch: the bot's side of the NATS JetStream job queue (see `bot.dispatch.dispatcher` and `bot.dispatch.local`).

Imports no torch: only `generation.protocol.contract`, `generation.protocol.queue` and `generation.protocol.natsserver` from the generation side.
"""

from bot.dispatch.dispatcher import Dispatcher, JobEvent, ReconcileReport
from bot.dispatch.local import LocalWorker, open_dispatcher

__all__ = ["Dispatcher", "JobEvent", "LocalWorker", "ReconcileReport", "open_dispatcher"]
