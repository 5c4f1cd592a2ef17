"""The one error handler of the bot."""

from bot.exts.errors.handler import ErrorHandler, report_error


async def setup(bot) -> None:
    await bot.add_cog(ErrorHandler(bot))


__all__ = ["ErrorHandler", "report_error"]
