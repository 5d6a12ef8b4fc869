#!/usr/bin/env bash
# The README's main command: set up the environment (first run only), then run the quick benchmark
# on the machine at hand and print the speed-up tables. Arguments go to scripts/bench.sh.
exec "$(dirname "$0")/bench.sh" "$@"
