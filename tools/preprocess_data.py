"""Corpus -> Megatron indexed dataset; a thin wrapper around ``megatron-bliss preprocess``.

    python tools/preprocess_data.py --input c4/*.json.gz --output-prefix out/c4 \
        --tokenizer ../shared/data/tokenizers/gpt-neox-20b_tokenizer.json --workers 2 --append-eod
"""

import sys

from megatron_bliss.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
