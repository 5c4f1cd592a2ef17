"""/style: a member's own styles (save, list, remove), and the `style` option of /imagine (bot.services.styles)."""

from bot.exts.styles.cog import Styles


async def setup(bot) -> None:
    await bot.add_cog(Styles(bot))
