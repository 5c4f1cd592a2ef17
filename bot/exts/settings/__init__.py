"""/settings: a member's own defaults for /imagine and their public/stealth mode (bot.services.preferences)."""

from bot.exts.settings.cog import Settings


async def setup(bot) -> None:
    await bot.add_cog(Settings(bot))
