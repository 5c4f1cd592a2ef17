"""/describe and the image context menus ("Describe this image", "Imagine from this image").

Not an extension of its own: the commands are registered by the imagine cog (`bot.exts.imagine.cog`), which owns
/imagine and its flow; this package holds what they do (`flow`).
"""
