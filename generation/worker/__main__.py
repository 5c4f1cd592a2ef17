import sys

from generation.worker.worker import main

if __name__ == "__main__":
    sys.exit(main())
