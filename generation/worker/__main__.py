import os
import sys

from generation.worker.worker import main

if __name__ == "__main__":
    # What the worker writes (its model cache, temporary files) is its user's alone, like the bot's data.
    os.umask(0o077)
    sys.exit(main())
