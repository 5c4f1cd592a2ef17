"""The ⭐ showcase: a result with enough ⭐ reactions is reposted once to the showcase channel (bot.services.showcase)."""

from bot.exts.showcase.cog import Showcase


async def setup(bot) -> None:
    await bot.add_cog(Showcase(bot))
