"""Features of the bot, one package each. Each package's `__init__` only does `setup`.

- `errors`   the one error handler: domain errors → friendly ephemeral text; bugs → apology with ids + log line.
- `imagine`  /imagine (`cog`), the start of every job (`flow.start_job`: checks, reservation, queued message,
             hand-off to the dispatcher) and `presenter.JobPresenter`, which the dispatcher calls to show progress
             and to post results (channel message with the bot token, exactly once).
- `buttons`  what each job button does (U, V subtle/strong, 🔄, ✏️ + the remix modal, ℹ️, 🗑️, ✖); the buttons
             themselves are `bot.ui.buttons.JobButton` (a DynamicItem: all state in the custom_id).
- `account`  /quota, /history, /show, /help.
- `mod`      the /mod GroupCog; every command checked server-side again and audited.
- `styles`   /style save|list|remove (a member's own styles) and /imagine's `style` option (bot.services.styles).
- `settings` /settings: a member's own defaults for /imagine and public/stealth mode (bot.services.preferences).
- `showcase` the ⭐ showcase: a result with enough ⭐ reactions is reposted once (bot.services.showcase).

Cogs read input, call a service (`bot.deps`: settings, jobs, quota, moderation, audit, images, dispatcher) and
render with `bot.ui`. They hold nothing between interactions that a restart would lose.
"""

#: Extensions loaded by `bot.app.ImagineBot.setup_hook`, in order (errors first: it installs the one handler).
EXTENSIONS = (
    "bot.exts.errors",
    "bot.exts.buttons",
    "bot.exts.imagine",
    "bot.exts.account",
    "bot.exts.mod",
    "bot.exts.styles",
    "bot.exts.showcase",
    "bot.exts.settings",
)
