"""The BLISS score models: what maps a sequence to the logit whose softmax weights the proxy.

``ScoreModel`` (``score_head: regression``, the authors'): a transformer backbone, mean pooling,
``Linear(h, 1)``, sigmoid. ``LikelihoodRatioScoreModel`` (``score_head: likelihood_ratio``): a
trainable copy of the proxy and a frozen one; the logit is ``scale`` times how much more likely
the trained copy finds the sequence than the frozen one.

One score in (0, 1) per sequence (the authors' ``GPTRegression``: average over all token positions
of the final normed hidden states). Pools are ranked by the logit (``ScoreModel.logits``, the
sigmoid's argument in float32): the same order, without the ties a saturated sigmoid makes. In round 1 the backbone starts from the warm-up proxy with a
new head; later rounds load the previous round's ``score_model/`` directory, which holds

    model.safetensors   backbone + head weights (likelihood ratio: both language models)
    config.json         the backbone's transformers config
    score_model.json    format version, head, sequence length, hidden size, family, tokenizer info
    tokenizer files     when a tokenizer was given (so ``score --scorer DIR`` is self-contained)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from megatron_bliss.errors import InputError, MissingFileError

FORMAT = "megatron-bliss-score-model/1"


class ScoreModel(nn.Module):
    head_kind = "regression"
    reference_forwards = 0  # extra frozen-model forwards per scored sequence (FLOPs)
    uses_lm_head = False

    def __init__(self, backbone: nn.Module, head_init_std: float = 0.02, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(1, hidden, generator=generator) * head_init_std)
            self.head.bias.zero_()

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scores in (0, 1), shape (B,)."""
        return torch.sigmoid(self.logits(input_ids))

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The sigmoid's argument, pooled and projected in at least float32 even under bf16
        autocast: a saturated sigmoid in bf16 rounds the top of a ranking into ties."""
        hidden = self.backbone(input_ids=input_ids).last_hidden_state
        dtype = torch.promote_types(self.head.weight.dtype, torch.float32)
        pooled = hidden.to(dtype).mean(dim=1)
        with torch.autocast(pooled.device.type, enabled=False):
            weight, bias = self.head.weight.to(dtype), self.head.bias.to(dtype)
            return torch.nn.functional.linear(pooled, weight, bias).squeeze(-1)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, head_init_std: float = 0.02, seed: int = 0):
        """Backbone copied from a causal LM (the warm-up proxy) plus a freshly initialised head."""
        backbone = build_backbone(lm.config).to(next(lm.parameters()).dtype)
        backbone.load_state_dict(lm.base_model.state_dict())
        reference = next(lm.parameters())
        return cls(backbone, head_init_std, seed).to(reference.device, reference.dtype)

    def save(self, directory: str | Path, meta: dict[str, Any], tokenizer=None) -> None:
        write_directory(self, directory, {"head": self.head_kind, **meta}, tokenizer)


class LikelihoodRatioScoreModel(nn.Module):
    """``logit(x) = scale * (CE(x; reference) - CE(x; lm))``, mean next-token cross-entropies.

    Why this form: the upper level wants logits proportional to ``c_i = g_i . z``, the change of
    sequence i's loss along a direction in the proxy's parameter space. A copy of the proxy moved
    by ``delta`` changes sequence i's loss by ``g_i . delta`` to first order, so a likelihood ratio
    against the unmoved copy represents the alignment exactly, for every sequence at once, where
    a pooled regression head must learn it from features (shuffled words share the unigram
    features of text, and a regression head ranks them close to it). Both copies start as the
    warm proxy, so every logit starts at 0 (uniform weights). The difference of two close losses
    is computed in float32 whatever the autocast around it.
    """

    head_kind = "likelihood_ratio"
    reference_forwards = 1
    uses_lm_head = True

    def __init__(self, lm: nn.Module, reference: nn.Module, scale: float = 1.0):
        super().__init__()
        self.lm, self.reference, self.scale = lm, reference.requires_grad_(False), float(scale)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(input_ids))

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        from megatron_bliss.selection.proxy import sequence_losses

        with torch.autocast(input_ids.device.type, enabled=False):
            with torch.no_grad():
                reference = sequence_losses(self.reference, input_ids)
            return self.scale * (reference - sequence_losses(self.lm, input_ids))

    def train(self, mode: bool = True):
        super().train(mode)
        self.reference.eval()
        return self

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, scale: float = 1.0):
        return cls(copy.deepcopy(lm), copy.deepcopy(lm), scale)

    def save(self, directory: str | Path, meta: dict[str, Any], tokenizer=None) -> None:
        write_directory(
            self, directory, {"head": self.head_kind, "scale": self.scale, **meta}, tokenizer
        )


def write_directory(model: nn.Module, directory, meta: dict, tokenizer) -> None:
    """Write a score model's directory under a temporary name, then rename it into place."""
    from safetensors.torch import save_file

    config = model.config
    # float32 copies on the CPU, cloned: tied embeddings share storage, which safetensors refuses.
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(state, str(staging / "model.safetensors"))
        (staging / "config.json").write_text(config.to_json_string())
        payload = {"format": FORMAT, "hidden_size": config.hidden_size, **meta}
        (staging / "score_model.json").write_text(json.dumps(payload, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def build_backbone(config) -> nn.Module:
    from transformers import AutoModel

    config = config.__class__.from_dict(config.to_dict())
    return AutoModel.from_config(config, attn_implementation="sdpa")


def read_meta(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    meta_path = directory / "score_model.json"
    if not meta_path.exists():
        raise MissingFileError(
            f"{meta_path}: not a score model directory (score_model.json missing)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def build_causal_lm(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    config = config.__class__.from_dict(config.to_dict())
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def load_score_model(
    directory: str | Path, device: torch.device | str = "cpu"
) -> ScoreModel | LikelihoodRatioScoreModel:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    directory = Path(directory)
    meta = read_meta(directory)
    config = AutoConfig.from_pretrained(directory)
    head = meta.get("head", "regression")
    if head == "regression":
        model = ScoreModel(build_backbone(config))
    elif head == "likelihood_ratio":
        lm, reference = build_causal_lm(config), build_causal_lm(config)
        model = LikelihoodRatioScoreModel(lm, reference, meta.get("scale", 1.0))
    else:
        raise InputError(f"{directory}/score_model.json: unknown head {head!r}")
    state = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"{directory}/model.safetensors: weights do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval()
