"""The web gallery: the server's posted images on a web page, served by the bot's own process (GALLERY_PORT).

    catalog.py   what is shown (the one rule), pages, search (SQLite FTS5), one job, one image; /mod gallery hide
    thumbs.py    thumbnails made once (WebP) and kept under data/thumbs; the sweep of stale ones
    web.py       the Starlette app: routes, templates (templates/), query bounds, security headers
    server.py    uvicorn as a task of the bot's event loop; public channels and member names from discord.py's cache

The bot starts it in `ImagineBot.setup_hook` when GALLERY_PORT is set and stops it in `close`
(`bot.gallery.server.start_gallery`). Nothing here imports torch; the web modules (Starlette, uvicorn, Jinja2) are
imported only when the gallery starts or a test asks for them: `catalog` alone is what /mod needs.
"""
