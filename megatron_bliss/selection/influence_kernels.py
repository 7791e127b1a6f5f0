"""Compute kernels of Influence Distillation: JVP embeddings, per-sample gradients, projections.

- ``jvp_embeddings``: forward-mode AD (``torch.func.jvp``) of the last-token hidden state of the
  model truncated to its first K blocks, along m fixed random tangents over the truncated
  model's parameters; concatenated and randomly projected. A cheap per-sample "gradient
  fingerprint": m forward-mode passes through K blocks, no backward pass.
- ``GradientSketcher``: exact per-sample gradients of the loss w.r.t. the MLP down-projections
  (``mlp.dense_4h_to_h`` for GPT-NeoX, ``mlp.down_proj`` for LLaMA), for a whole batch in one
  backward pass: a linear layer's per-sample weight gradient is ``sum_t g_t x_t^T`` of its output
  gradients and inputs (captured by hooks), so no per-sample loop is needed. Optionally multiplied
  by an Adam preconditioner, then normalised to unit length and projected.
- ``BlockProjector``: Johnson-Lindenstrauss projection applied per parameter block and summed
  (linear, so the projection of the concatenated gradient is the sum of the blocks'
  projections): randomized Hadamard (random signs, orthonormal fast Walsh-Hadamard transform,
  random coordinate subsample, scale sqrt(n/k)) or dense Rademacher. Blocks never need to be
  concatenated, which keeps memory at one layer's gradient per sample.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModel

from megatron_bliss.data.target_set import IGNORE_INDEX
from megatron_bliss.errors import ConfigError
from megatron_bliss.models.parameter_subsets import matching_linear_modules

PROJECTIONS = ("hadamard", "rademacher", "none")


# -- random projections ----------------------------------------------------------------------
def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform along the last axis (length a power of two)."""
    rows, n = x.shape
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    h = 1
    while h < n:
        pairs = x.view(rows, n // (2 * h), 2, h)
        x = torch.stack((pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]), dim=2)
        h *= 2
    return x.reshape(rows, n) / math.sqrt(n)


class BlockProjector:
    """A seeded linear map from concatenated parameter blocks to ``dim`` coordinates.

    The same instance (same seed) must project every gradient that is compared, so landmark and
    target gradients land in one space.
    """

    def __init__(self, kind: str, dim: int, seed: int):
        if kind not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {', '.join(PROJECTIONS)}, got '{kind}'")
        self.kind, self.dim, self.seed = kind, int(dim), int(seed)

    def _generator(self, block: int, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed * 1_000_003 + block)
        return generator

    def hadamard(self, block: int, x: torch.Tensor) -> torch.Tensor:
        rows, n = x.shape
        padded = 1 << max(0, (n - 1).bit_length())
        generator = self._generator(block, x.device)
        signs = torch.randint(0, 2, (n,), generator=generator, device=x.device) * 2 - 1
        mixed = fwht(F.pad(x * signs.to(x.dtype), (0, padded - n)))
        if padded >= self.dim:
            keep = torch.randperm(padded, generator=generator, device=x.device)[: self.dim]
            return mixed[:, keep] * math.sqrt(padded / self.dim)
        spread = torch.zeros(rows, self.dim, dtype=x.dtype, device=x.device)
        where = torch.randperm(self.dim, generator=generator, device=x.device)[:padded]
        spread[:, where] = mixed  # an isometry into a larger space: nothing to subsample
        return spread

    def rademacher(self, block: int, x: torch.Tensor, chunk_rows: int = 8192) -> torch.Tensor:
        generator = self._generator(block, x.device)
        out = torch.zeros(x.shape[0], self.dim, dtype=x.dtype, device=x.device)
        for start in range(0, x.shape[1], chunk_rows):
            part = x[:, start : start + chunk_rows]
            signs = torch.randint(
                0, 2, (part.shape[1], self.dim), generator=generator, device=x.device
            )
            out += part @ (signs.to(x.dtype) * 2 - 1)
        return out / math.sqrt(self.dim)

    def project(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``[B, dim]`` projection of the row-wise concatenation of ``blocks`` (each ``[B, n_i]``)."""
        if self.kind == "none":
            return torch.cat(blocks, dim=1)
        method = self.hadamard if self.kind == "hadamard" else self.rademacher
        return sum(method(index, block) for index, block in enumerate(blocks))


def rademacher_matrix(rows: int, cols: int, seed: int) -> np.ndarray:
    """A dense ``rows x cols`` +-1/sqrt(cols) matrix (small projections, e.g. JVP embeddings)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, (rows, cols)) * 2 - 1).astype(np.float32) / np.sqrt(cols)


# -- per-sample losses -----------------------------------------------------------------------
def shifted_batch(input_ids: torch.Tensor, labels: torch.Tensor):
    """HF-aligned ``(input_ids, labels)`` -> model inputs and next-token targets of equal length."""
    return input_ids[:, :-1], labels[:, 1:]


def per_sample_losses(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each row's scored targets (``IGNORE_INDEX`` elsewhere)."""
    logits = model(input_ids=inputs).logits.float()
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return per_token.sum(dim=1) / counts


# -- per-sample gradients ----------------------------------------------------------------------
def subset_modules(model: torch.nn.Module, subset: str) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers whose per-sample gradients are taken, in model order."""
    found = matching_linear_modules(model, subset)
    if not found:
        raise ConfigError(
            f"influence: no linear layer of the model matches param_subset '{subset}'"
        )
    return found


def adam_preconditioner(exp_avg_sq: torch.Tensor, step: int, beta1, beta2, eps) -> torch.Tensor:
    """Diagonal ``a`` of the next AdamW step linearised in the gradient (method-spec 2.2)."""
    v_hat = exp_avg_sq / (1 - beta2 ** (step + 1))
    return (1 - beta1) / (1 - beta1 ** (step + 1)) / (v_hat.sqrt() + eps)


class GradientSketcher:
    """Unit-normalised, projected per-sample gradients on a subset of linear layers."""

    def __init__(self, model, subset: str, projector: BlockProjector, preconditioner=None):
        self.model = model
        self.modules = subset_modules(model, subset)
        self.projector = projector
        self.preconditioner = preconditioner or {}  # parameter name -> tensor like the parameter
        self.dimension = sum(
            m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            for _, m in self.modules
        )

    def _capture(self):
        """Forward hooks that keep every subset layer's input and its output's gradient."""
        captured: dict[str, dict[str, torch.Tensor]] = {name: {} for name, _ in self.modules}
        handles = []
        for name, module in self.modules:

            def hook(mod, args, output, slot=captured[name]):
                slot["x"] = args[0].detach()
                output.register_hook(lambda grad: slot.__setitem__("g", grad.detach()))

            handles.append(module.register_forward_hook(hook))
        return captured, handles

    def blocks(self, inputs, targets, precondition: bool) -> tuple[list[torch.Tensor], int]:
        """Per-sample gradient blocks ``[B, n_i]`` (weights, then biases) of one batch."""
        flags = {p: p.requires_grad for p in self.model.parameters()}
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        weights = [module.weight for _, module in self.modules]
        for weight in weights:
            weight.requires_grad_(True)
        captured, handles = self._capture()
        try:
            loss = per_sample_losses(self.model, inputs, targets).sum()
            torch.autograd.grad(loss, weights)
        finally:
            for handle in handles:
                handle.remove()
            for parameter, flag in flags.items():
                parameter.requires_grad_(flag)
        out = []
        for name, module in self.modules:
            x, g = captured[name]["x"].float(), captured[name]["g"].float()
            grads = {"weight": torch.einsum("bto,bti->boi", g, x)}
            if module.bias is not None:
                grads["bias"] = g.sum(dim=1)
            for kind, grad in grads.items():
                scale = self.preconditioner.get(f"{name}.{kind}") if precondition else None
                if scale is not None:
                    grad = grad * scale.to(grad.device, grad.dtype)
                out.append(grad.reshape(grad.shape[0], -1))
        return out, inputs.numel()

    def sketch(self, inputs, targets, precondition: bool = False) -> torch.Tensor:
        """``[B, dim]`` projections of the unit-normalised per-sample gradients."""
        blocks, _ = self.blocks(inputs, targets, precondition)
        norms = torch.sqrt(sum((block**2).sum(dim=1) for block in blocks)).clamp(min=1e-12)
        return self.projector.project(blocks) / norms[:, None]


# -- JVP embeddings ---------------------------------------------------------------------------
def truncated_backbone(model: torch.nn.Module, num_blocks: int) -> torch.nn.Module:
    """The first ``num_blocks`` transformer blocks of ``model`` (embeddings and final norm kept).

    Built with eager attention: forward-mode AD needs plain differentiable ops.
    """
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = min(num_blocks, model.config.num_hidden_layers)
    truncated = AutoModel.from_config(config, attn_implementation="eager")
    source = model.base_model.state_dict()
    wanted = truncated.state_dict()
    truncated.load_state_dict({key: source[key] for key in wanted})
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return truncated.to(device=device, dtype=dtype).eval()


def jvp_embeddings(
    model: torch.nn.Module,
    pool,
    *,
    num_blocks: int,
    num_tangents: int,
    proj_dim: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> np.ndarray:
    """``[N, D]`` float32 embeddings ``P [J_x v_1; ...; J_x v_m]`` of every pool sequence.

    ``J_x`` is the Jacobian of the last-token hidden state of the truncated model w.r.t. its
    parameters; the tangents ``v_k`` are fixed Gaussian directions. ``P`` is a Rademacher
    projection to ``proj_dim`` applied only when the concatenation is longer than that.
    """
    truncated = truncated_backbone(model, num_blocks).to(device)
    params = {name: p.detach() for name, p in truncated.named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    tangents = [
        {
            name: torch.randn(p.shape, generator=generator).to(device, p.dtype)
            for name, p in params.items()
        }
        for _ in range(num_tangents)
    ]
    width = num_tangents * truncated.config.hidden_size
    projection = rademacher_matrix(width, proj_dim, seed + 1) if width > proj_dim else None
    out = np.zeros((len(pool), proj_dim if projection is not None else width), dtype=np.float32)
    starts = range(0, len(pool), batch_size)
    for start in tqdm(starts, desc="jvp embeddings", disable=len(starts) < 20, leave=False):
        rows = np.arange(start, min(start + batch_size, len(pool)))
        inputs = torch.from_numpy(pool.batch(rows)[:, : pool.seq_length]).to(device)

        def last_hidden(parameters, inputs=inputs):
            hidden = torch.func.functional_call(truncated, parameters, (inputs,))
            return hidden.last_hidden_state[:, -1].float()

        with torch.no_grad():
            parts = [torch.func.jvp(last_hidden, (params,), (t,))[1] for t in tangents]
        embedding = torch.cat(parts, dim=1).cpu().numpy()
        out[rows] = embedding @ projection if projection is not None else embedding
    return out
