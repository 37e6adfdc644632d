"""`python -m minila.convert`: GGUF to an HF-format folder (`minila/llama/convert.py`)."""

import sys

from minila.llama.convert import main

if __name__ == "__main__":
    sys.exit(main())
