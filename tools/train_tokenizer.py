"""Train a byte-level BPE or sentencepiece tokenizer; a wrapper around ``megatron-bliss train-tokenizer``.

python tools/train_tokenizer.py --input corpus.jsonl --vocab-size 8192 --output tok/ [--type bpe]
"""

import sys

from megatron_bliss.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-tokenizer", *sys.argv[1:]]))
