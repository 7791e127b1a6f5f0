"""Split a corpus into K non-overlapping shards; a wrapper around ``megatron-bliss make-shards``.

    python tools/make_shards.py --input c4/*.json.gz --tokenizer T --append-eod --workers 2 \
        --num-shards 4 --output-prefix out/c4           # -> out/c4_shard{k}_text_document
    python tools/make_shards.py --data-prefix out/c4_text_document --num-shards 4 \
        --output-prefix out/c4
"""

import sys

from megatron_bliss.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-shards", *sys.argv[1:]]))
