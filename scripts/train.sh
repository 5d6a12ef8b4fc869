#!/usr/bin/env bash
# Set up the environment (first run only) and run convbert-train.
# Without arguments: pre-train a small ConvBERT on the Python standard library's docstrings for a
# few minutes on CPU (or GPU if there is one) and save it under runs/. Arguments go to convbert-train,
# e.g. scripts/train.sh pretrain --train-file corpus.txt --model-size small --max-steps 10000
# Several GPUs: torchrun --nproc-per-node 8 -m convbert.train pretrain ...
source "$(dirname "$0")/env.sh"
exec convbert-train "$@"
