"""`python -m minila.generate`: the command line: one request, a comparison or a conversation (`minila/cli/generate.py`)."""

import sys

from minila.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
