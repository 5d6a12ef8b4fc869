#!/usr/bin/env bash
# The README's main command: set up the environment (first run only), then run convbert-train.
# With no arguments it pre-trains a small ConvBERT on the Python standard library's docstrings for
# a few minutes on CPU (the GPU if there is one), printing loss and tokens/s, and saves it under runs/.
# The quick benchmark is scripts/bench.sh.
exec "$(dirname "$0")/train.sh" "$@"
