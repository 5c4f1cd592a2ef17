"""The moderator command group /mod."""

from bot.exts.mod.cog import Mod


async def setup(bot) -> None:
    await bot.add_cog(Mod(bot))
