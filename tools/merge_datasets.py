"""Merge indexed datasets; a thin wrapper around ``megatron-bliss merge-datasets``.

    python tools/merge_datasets.py --input out/a_text_document out/b_text_document \
        --output-prefix out/all_text_document
"""

import sys

from megatron_bliss.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge-datasets", *sys.argv[1:]]))
