"""Map the local evaluation files onto the Hugging Face schemas that lm-eval's task YAMLs read.

The shipped task YAMLs ``include`` lm-eval's own definitions, so prompts, targets and metrics are
lm-eval's; only the documents come from local files. Where a local file already has the hub's
schema (HellaSwag, PIQA, SciQ, WinoGrande, LAMBADA) nothing is mapped. The functions here cover the
rest: the OLMES-rebuilt ARC/OpenBookQA test splits (``question, choices[], gold``) and BoolQ,
whose local copy has ``answer: bool`` where lm-eval's ``super_glue`` schema has ``label: int``.
"""

from __future__ import annotations

import string

import datasets


def olmes_to_hub_choices(doc: dict, question_key: str) -> dict:
    """``{question, choices[], gold}`` -> ``{question_key, choices{text,label}, answerKey}``."""
    labels = list(string.ascii_uppercase[: len(doc["choices"])])
    return {
        question_key: doc["question"],
        "choices": {"text": list(doc["choices"]), "label": labels},
        "answerKey": labels[int(doc["gold"])],
    }


def arc_from_olmes(dataset: datasets.Dataset) -> datasets.Dataset:
    """ARC test split rebuilt by OLMES -> the ``allenai/ai2_arc`` schema."""
    return dataset.map(lambda doc: olmes_to_hub_choices(doc, "question"), remove_columns=["gold"])


def openbookqa_from_olmes(dataset: datasets.Dataset) -> datasets.Dataset:
    """OpenBookQA test split rebuilt by OLMES -> the ``allenai/openbookqa`` (main) schema."""
    return dataset.map(
        lambda doc: olmes_to_hub_choices(doc, "question_stem"),
        remove_columns=["question", "gold"],
    )


def boolq_to_super_glue(dataset: datasets.Dataset) -> datasets.Dataset:
    """BoolQ (``answer: bool``) -> the ``super_glue/boolq`` schema (``label``: 0 = no, 1 = yes)."""
    return dataset.map(lambda doc: {"label": int(bool(doc["answer"]))})
