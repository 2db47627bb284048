"""GroupNorm over statistics that span ranks: the temporal ResNet's norms see every frame and every position.

`TemporalResnetBlock` normalises (B, C, F, H, W) over (C/32, F, H, W) per group, and a position shard holds
only some positions. Each rank sends its per-group (mean, variance); every rank merges all of them in
rank order in fp64, so every rank gets the same bits whatever its own share was. The element counts come from
the split sizes, which every rank knows, so only means and variances travel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from svdpipe.wide.comm import Communicator


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where the normalisation runs: fp32 for half-precision activations (as torch's GroupNorm kernels do),
    else the activations' own dtype."""
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def local_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """This rank's fp64 statistics of x (B, C, ...): per-(batch, group) means, then variances, in one flat tensor
    so that one all-gather carries them. Deviations are formed in the compute dtype and summed in fp64, which
    keeps an fp64 copy of the shard (hundreds of MB at SVD-XT's top level) out of memory."""
    import torch

    grouped = x.reshape(x.shape[0], groups, -1).to(compute_dtype(x.dtype))
    n = grouped.shape[-1]
    mean = grouped.sum(dim=-1, dtype=torch.float64) / n
    deviation = grouped - mean.to(grouped.dtype)[..., None]
    var = deviation.square().sum(dim=-1, dtype=torch.float64) / n
    return torch.cat([mean.flatten(), var.flatten()])


def merge_stats(gathered: list[torch.Tensor], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (mean, variance), flat per (batch, group), from every rank's `local_stats` over `counts[q]`
    elements per group, added in list (rank) order.

    The variance is merged as sum n_q (var_q + (mean_q - mean)^2) / N, two passes over the ranks, which keeps
    the cancellation of E[x^2] - E[x]^2 out of it."""
    total = sum(counts)
    k = gathered[0].numel() // 2
    mean = sum((n / total) * g[:k] for n, g in zip(counts, gathered, strict=True))
    var = sum((n / total) * (g[k:] + (g[:k] - mean).square()) for n, g in zip(counts, gathered, strict=True))
    return mean, var


def distributed_group_norm(
    comm: Communicator, norm: torch.nn.GroupNorm, x: torch.Tensor, counts: list[int]
) -> torch.Tensor:
    """`norm(x)` for x (B, C, ...) that is one rank's shard of the tensor the statistics range over; `counts[q]`
    is the number of elements per (batch, group) on rank q (x holds `counts[comm.rank]`).

    Uses the module's own groups, eps and affine weights; normalises in `compute_dtype`, returns x's dtype."""
    import torch

    batch, channels = x.shape[:2]
    groups = norm.num_groups
    assert x[0].numel() // groups == counts[comm.rank], "counts disagree with the shard"
    mean, var = merge_stats(comm.all_gather_stats(local_stats(x, groups)), counts)
    mean, var = mean.view(batch, groups), var.view(batch, groups)
    compute = compute_dtype(x.dtype)
    rstd = torch.rsqrt(var + norm.eps).to(compute)
    grouped = x.reshape(batch, groups, -1).to(compute)
    y = ((grouped - mean.to(compute)[..., None]) * rstd[..., None]).view(x.shape)
    if norm.affine:
        shape = (1, channels) + (1,) * (x.ndim - 2)
        y = y * norm.weight.to(compute).view(shape) + norm.bias.to(compute).view(shape)
    return y.to(x.dtype)
