"""Clicks on job buttons (U, V, 🔄, ✏️, ℹ️, 🗑️, ✖) and the remix modal."""

from bot.exts.buttons.cog import JobActions


async def setup(bot) -> None:
    await bot.add_cog(JobActions(bot))
