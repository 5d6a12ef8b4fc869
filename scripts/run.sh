#!/usr/bin/env bash
# The README's main command: set up the environment (first run only), then run convbert-train.
# With no arguments it pre-trains a small ConvBERT on the Python standard library's docstrings:
# about 3½ minutes on 2 idle CPU cores (several times longer when other work shares them), or
# on the GPU if there is one. Each log line leads with the generator's masked-LM loss, which falls;
# a held-out masked-token accuracy is printed at the start and at the end. The model and its
# tokenizer go to runs/convbert-pretrain-<time>/; the gathered corpus is cached in ~/.cache/convbert.
# The quick benchmark is scripts/bench.sh.
exec "$(dirname "$0")/train.sh" "$@"
