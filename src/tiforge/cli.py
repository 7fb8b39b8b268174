"""The public entry point: `tiforge`, `python -m tiforge.frontends.cli`, `accelerate launch -m tiforge.frontends.cli`."""

import sys

from tiforge.frontends.cli import main

if __name__ == "__main__":
    sys.exit(main())
