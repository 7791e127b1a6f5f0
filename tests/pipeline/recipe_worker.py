"""A launch script's python half for a test's own pretrain YAML: ``torchrun ... recipe_worker.py
CONFIG [key=value ...]`` runs ``launch`` on every rank, with the recipe runner."""

import sys

from megatron_bliss.engine.launch import launch
from megatron_bliss.pipeline.recipe import run_recipe

if __name__ == "__main__":
    config = sys.argv.pop(1)  # launch reads its overrides from the rest of the command line
    sys.exit(launch(config, recipe=run_recipe))
