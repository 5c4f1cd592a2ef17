"""A member's own things: /quota, /history, /show, /help."""

from bot.exts.account.cog import Account


async def setup(bot) -> None:
    await bot.add_cog(Account(bot))
