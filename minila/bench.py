"""`python -m minila.bench`: the benchmark (`minila/cli/bench/main.py`)."""

import sys

from minila.cli.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
