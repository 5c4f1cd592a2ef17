"""/imagine: the command, the start of a job, and the messages that show its progress and its result."""

from bot.exts.imagine.cog import Imagine


async def setup(bot) -> None:
    await bot.add_cog(Imagine(bot))
