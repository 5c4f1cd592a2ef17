"""`python -m generation "a prompt"`: the engine's command line (generation.engine.cli)."""

import sys

from generation.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
