"""Features of the bot, one package each. Each package's `__init__` only does `setup`."""

#: Extensions loaded by `bot.app.ImagineBot.setup_hook`, in order (errors first: it installs the one handler).
EXTENSIONS = (
    "bot.exts.errors",
    "bot.exts.buttons",
    "bot.exts.imagine",
    "bot.exts.account",
    "bot.exts.mod",
)
