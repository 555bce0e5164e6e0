"""FedLD's principal-direction revision of stacked client updates, per parameter block.

For one block G ([m, d], row i = client i's update) with SVD G = U S V^T, FedLD revises each row to
    d'_i = ||d_i|| * sum_{j<k} sign(<d_i, v_j>) * lam_j * v_j,   lam_j = s_j^2 / sum_l s_l^2,
and averages the revised rows. FedLD first sets each v_j's sign by majority vote of the clients;
that step cancels out, because sign(<d_i, -v>) * (-v) = sign(<d_i, v>) * v for every client, so
the revision is the same for either sign of every direction and the kernel does not vote.

Everything follows from the m x m Gram matrix H = G G^T = E diag(s^2) E^T: <d_i, v_j> = s_j E_ij
and v_j = G^T E_j / s_j, so d'_i = sum_l C_il d_l with C = diag(||d||) sign(E) diag(s / sum s^2)
E^T over the top k columns. The kernel therefore costs one Gram matrix and one GEMV per block on
the kernel device, plus a batched float64 eigh of the tiny [blocks, m, m] Grams on the CPU. Nothing divides by a projection, so zero and orthogonal updates
give zeros, not NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedcore.kernels.accumulate import weighted_sum
from fedcore.kernels.device import resolve_device

#: |cos(d_i, v_j)| at or below this counts as orthogonal (sign 0), absorbing eigh round-off.
ORTHOGONAL_COSINE = 1e-9

Bounds = Sequence[tuple[int, int]]


def principal_count(m: int, k_fraction: float) -> int:
    """Directions kept for m clients: floor(k_fraction * m), at least 1 (so m = 1 keeps its update)."""
    return max(1, min(m, math.floor(k_fraction * m)))


def revision_matrices(grams: torch.Tensor, k_fraction: float) -> torch.Tensor:
    """C of shape [B, m, m] with revised rows = C @ G, from float64 Grams [B, m, m] (CPU)."""
    if grams.dim() != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"want Gram matrices [B, m, m], got {tuple(grams.shape)}")
    grams = grams.to("cpu", torch.float64)
    m = grams.shape[1]
    k = principal_count(m, k_fraction)
    eigenvalues, vectors = torch.linalg.eigh(grams)
    eigenvalues = eigenvalues.flip(-1)[..., :k].clamp_min(0.0)
    vectors = vectors.flip(-1)[..., :k]
    singular = eigenvalues.sqrt()
    norms = torch.diagonal(grams, dim1=1, dim2=2).clamp_min(0.0).sqrt()
    total = torch.diagonal(grams, dim1=1, dim2=2).sum(-1).clamp_min(0.0)
    cosines = singular.unsqueeze(1) * vectors / norms.clamp_min(1e-300).unsqueeze(-1)
    signs = torch.where(cosines.abs() <= ORTHOGONAL_COSINE, 0.0, torch.sign(vectors))
    scale = torch.where(total > 0, 1.0 / total.clamp_min(1e-300), 0.0)
    weights = signs * (singular * scale.unsqueeze(-1)).unsqueeze(1)
    return norms.unsqueeze(-1) * weights @ vectors.transpose(1, 2)


def block_grams(stacked: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Float64 Gram matrices [B, m, m] of the column blocks [a, b) of stacked [m, P]."""
    m = stacked.shape[0]
    grams = torch.empty(len(bounds), m, m, dtype=torch.float64, device=stacked.device)
    for index, (start, stop) in enumerate(bounds):
        block = stacked[:, start:stop].to(torch.float64)
        grams[index] = block @ block.t()
    return grams


def principal_revision(
    stacked: torch.Tensor, bounds: Bounds, k_fraction: float = 0.8, device: str = "auto"
) -> torch.Tensor:
    """Each client's revised update, [m, P] in float64 on `device` (what FedLD averages)."""
    work = _on_device(stacked, bounds, device)
    matrices = revision_matrices(block_grams(work, bounds), k_fraction).to(work.device)
    revised = torch.zeros(work.shape, dtype=torch.float64, device=work.device)
    for matrix, (start, stop) in zip(matrices, bounds, strict=True):
        revised[:, start:stop] = matrix @ work[:, start:stop].to(torch.float64)
    return revised


def principal_mean(
    stacked: torch.Tensor, bounds: Bounds, k_fraction: float = 0.8, device: str = "auto"
) -> torch.Tensor:
    """The uniform mean over clients of the revised updates, [P] in the input's dtype and device.

    Columns outside every block stay zero. Equals `principal_revision(...).mean(0)` without
    materialising the revised rows: per block, one GEMV with weights mean_i C_il.
    """
    work = _on_device(stacked, bounds, device)
    matrices = revision_matrices(block_grams(work, bounds), k_fraction)
    coefficients = matrices.mean(dim=1).to(work.device)
    mean = torch.zeros(work.shape[1], dtype=torch.float64, device=work.device)
    for weights, (start, stop) in zip(coefficients, bounds, strict=True):
        mean[start:stop] = weighted_sum(work[:, start:stop].to(torch.float64), weights)
    return mean.to(stacked.device, stacked.dtype)


def _on_device(stacked: torch.Tensor, bounds: Bounds, device: str) -> torch.Tensor:
    """Check shapes and move the stack to the kernel device."""
    if stacked.dim() != 2 or stacked.shape[0] < 1:
        raise ValueError(f"want stacked updates [m >= 1, P], got {tuple(stacked.shape)}")
    for start, stop in bounds:
        if not 0 <= start <= stop <= stacked.shape[1]:
            raise ValueError(f"block [{start}, {stop}) outside [0, {stacked.shape[1]})")
    return stacked.to(resolve_device(device))
