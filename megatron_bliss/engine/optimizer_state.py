"""Export of the optimizer's Adam moments: ``adam_state.pt`` beside a checkpoint's shards.

Influence Distillation (method-spec 2.2) preconditions per-sample gradients with the diagonal of
the next AdamW step, which needs the second moment ``v`` of every parameter it takes gradients of,
the step count and the optimizer's betas and eps. Under ZeRO those moments are partitioned across
ranks inside flat fp32 buffers, so they are gathered back to each parameter's full shape with
DeepSpeed's ``safe_get_full_optimizer_state`` and saved under the model's own
``named_parameters()`` names (the Hugging Face names the selector finds its layers by):

    {"step": int, "beta1": float, "beta2": float, "eps": float,
     "exp_avg_sq": {"gpt_neox.layers.0.mlp.dense_4h_to_h.weight": fp32 tensor, ...}}

``step`` is the optimizer's own count, which its next update's bias correction uses: the
optimizer steps taken, plus one under DeepSpeed's 16-bit wrappers without ZeRO (they take a
zero-gradient step at construction). Only the layers named by ``checkpoint.adam_state_params``
are exported (``down_proj``: the MLP down-projections, Influence Distillation's default subset),
which keeps the file small.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from megatron_bliss.errors import ConfigError
from megatron_bliss.models.parameter_subsets import matching_linear_modules
from megatron_bliss.utils.io import atomic_path

logger = logging.getLogger(__name__)

ADAM_STATE_FILE = "adam_state.pt"


def require_subset_layers(model: torch.nn.Module, subsets: list[str]) -> list[tuple[str, Any]]:
    """The linear layers ``subsets`` name in ``model``, or one line saying none matches."""
    modules = matching_linear_modules(model, subsets)
    if not modules:
        raise ConfigError(
            f"checkpoint.adam_state_params={list(subsets)}: no linear layer of the model matches"
        )
    return modules


def adam_hyperparameters(optimizer) -> tuple[float, float, float]:
    """``(beta1, beta2, eps)`` of the optimizer's parameter groups (all groups must agree)."""
    found = {
        (float(group["betas"][0]), float(group["betas"][1]), float(group["eps"]))
        for group in optimizer.param_groups
        if "betas" in group and "eps" in group
    }
    if len(found) != 1:
        raise ValueError(
            f"adam_state: optimizer {type(optimizer).__name__} has "
            f"{'no Adam betas/eps' if not found else f'differing betas/eps {sorted(found)}'}"
        )
    return found.pop()


def optimizer_step(optimizer) -> int:
    """Optimizer steps taken, as the optimizer counts them (``state[...]["step"]``; 0 if none).

    ZeRO optimizers expose their inner optimizer's state, keyed by flat fp32 partitions; every
    partition has stepped the same number of times.
    """
    steps = {int(state["step"]) for state in optimizer.state.values() if "step" in state}
    if len(steps) > 1:
        raise ValueError(f"adam_state: optimizer state has differing step counts {sorted(steps)}")
    return steps.pop() if steps else 0


def relink_state_fragments(optimizer) -> None:
    """Point every parameter at its current slice of the optimizer state (ZeRO-1/2, bf16).

    DeepSpeed 0.19.8 links them once, right after the *first* parameter group's first step, so
    groups stepped after it (our no-decay group: biases, norm weights) stay linked to an empty
    state and ``safe_get_full_optimizer_state`` raises "exp_avg_sq not found" for them. Redoing
    the link after training steps is what DeepSpeed's own lazy initialisation does; optimizers
    without that machinery (ZeRO-3, plain torch, later fixed versions) are left alone.
    """
    if hasattr(optimizer, "_hp_optimizer_states_linked") and hasattr(
        optimizer, "_lazy_init_hp_params_optimizer_state"
    ):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def master_copy_state(optimizer, parameter: torch.nn.Parameter) -> torch.Tensor | None:
    """``exp_avg_sq`` without ZeRO: of the parameter itself (fp32: the plain torch optimizer), or
    of its fp32 master copy under DeepSpeed's 16-bit wrappers, which keep one master tensor per
    parameter (``fp32_groups``, unfused) or one flat master per group (``fp32_groups_flat``,
    fused; parameters concatenated in group order without padding)."""
    state = optimizer.state.get(parameter, {})
    if "exp_avg_sq" in state:
        return state["exp_avg_sq"]
    for group_index, group in enumerate(getattr(optimizer, "fp16_groups", [])):
        offset = 0
        for index, member in enumerate(group):
            if member is parameter:
                if hasattr(optimizer, "fp32_groups_flat"):
                    flat = optimizer.fp32_groups_flat[group_index]
                    moment = optimizer.state[flat]["exp_avg_sq"]
                    return moment.narrow(0, offset, member.numel()).view(member.shape)
                return optimizer.state[optimizer.fp32_groups[group_index][index]]["exp_avg_sq"]
            offset += member.numel()
    return None


def full_exp_avg_sq(parameter: torch.nn.Parameter, optimizer, name: str) -> torch.Tensor:
    """The full-shape fp32 second moment of one parameter (a collective under ZeRO)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    value = safe_get_full_optimizer_state(parameter, "exp_avg_sq")
    if value is None:  # no ZeRO: the optimizer's state is keyed by this parameter or its master
        value = master_copy_state(optimizer, parameter)
    if value is None:
        raise ValueError(f"adam_state: no exp_avg_sq for parameter {name}")
    return value.detach().float().cpu().clone()  # clone: never save a larger gather buffer


def export_adam_state(engine, subsets: list[str], keep: bool = True) -> dict[str, Any] | None:
    """``{step, beta1, beta2, eps, exp_avg_sq: {name: tensor}}`` for the weights and biases of
    the layers ``subsets`` name (see ``models.parameter_subsets``).

    Under ZeRO-3 (and ZeRO-1/2 with several ranks) each gather is a collective: every rank must
    call this, and does so in the same (module) order. Ranks that pass ``keep=False`` drop each
    gathered tensor at once and get None, so only the writing rank holds the whole export.
    """
    optimizer = engine.optimizer
    step = optimizer_step(optimizer)
    if step == 0:
        raise ValueError("adam_state: the optimizer has taken no step yet (no moments to export)")
    beta1, beta2, eps = adam_hyperparameters(optimizer)
    relink_state_fragments(optimizer)
    exp_avg_sq: dict[str, torch.Tensor] = {}
    for name, module in require_subset_layers(engine.module, subsets):
        for kind in ("weight", "bias"):
            parameter = getattr(module, kind, None)
            if parameter is None:
                continue
            value = full_exp_avg_sq(parameter, optimizer, f"{name}.{kind}")
            if keep:
                exp_avg_sq[f"{name}.{kind}"] = value
    if not keep:
        return None
    return {"step": step, "beta1": beta1, "beta2": beta2, "eps": eps, "exp_avg_sq": exp_avg_sq}


def save_adam_state(engine, folder: Path, subsets: list[str], rank: int) -> Path:
    """Gather on every rank; rank 0 writes ``folder/adam_state.pt`` atomically."""
    path = Path(folder) / ADAM_STATE_FILE
    state = export_adam_state(engine, subsets, keep=rank == 0)
    if state is not None:
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
        logger.info(
            "adam state of %d parameters (step %d) saved: %s",
            len(state["exp_avg_sq"]),
            state["step"],
            path,
        )
    return path
