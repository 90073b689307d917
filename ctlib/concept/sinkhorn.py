"""Entropic optimal transport between sets of patch embeddings (METHOD.md §2.6), batched.

The reference solves one log-domain Sinkhorn problem per call (the current pairs of the batch,
then per sample its K positive pairs and its confusing·K negative pairs), each call stopping when
the mean over its pairs of |Δu|₁ falls below ``tol``. Here every pair of a step is solved in one
tensor; ``groups`` names the call each pair belongs to, and a group stops updating exactly when its
own criterion is met, so every plan equals the reference's. The iterations run without autograd:
gradients only flow through the cost entries picked from the plan, as in the reference.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn_log(cost: torch.Tensor, eps: float = 0.01, max_iter: int = 200, tol: float = 1e-3,
                 groups: torch.Tensor | None = None, check_every: int = 10) -> tuple[torch.Tensor, int]:
    """Transport plans (N, n, m) for costs (N, n, m) with uniform marginals 1/n and 1/m.

    ``groups`` (N,) long: pairs solved as one reference call (default: all pairs one group).
    Returns (plans, iterations run). Convergence is looked at every ``check_every`` iterations only
    to leave the loop early (a host sync); it never changes the result.
    """
    C = cost.detach()
    N, n, m = C.shape
    if groups is None:
        groups = torch.zeros(N, dtype=torch.long, device=C.device)
    num_groups = int(groups.max()) + 1 if N else 0
    group_size = torch.bincount(groups, minlength=num_groups).clamp(min=1).to(C.dtype)
    log_mu = torch.log(torch.tensor(1.0 / n + 1e-8, dtype=C.dtype, device=C.device))
    log_nu = torch.log(torch.tensor(1.0 / m + 1e-8, dtype=C.dtype, device=C.device))
    u = C.new_zeros(N, n)
    v = C.new_zeros(N, m)
    active = torch.ones(num_groups, dtype=torch.bool, device=C.device)
    it = 0
    for it in range(1, max_iter + 1):
        u_new = eps * (log_mu - torch.logsumexp((-C + u[:, :, None] + v[:, None, :]) / eps, dim=-1)) + u
        v_new = eps * (log_nu - torch.logsumexp((-C + u_new[:, :, None] + v[:, None, :]) / eps, dim=-2)) + v
        err = torch.zeros(num_groups, dtype=C.dtype, device=C.device).index_add_(
            0, groups, (u_new - u).abs().sum(-1)) / group_size
        upd = active[groups][:, None]
        u = torch.where(upd, u_new, u)
        v = torch.where(upd, v_new, v)
        active &= err >= tol
        if it % check_every == 0 and not bool(active.any()):
            break
    return torch.exp((-C + u[:, :, None] + v[:, None, :]) / eps), it


def select_costs(cost: torch.Tensor, plan: torch.Tensor, top: int, pick_one: bool,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Cost entries at the ``top`` largest plan entries of each pair: all of them (N, top), or, with
    ``pick_one``, one of them uniformly at random (N, 1). Differentiable in ``cost`` only."""
    N = cost.shape[0]
    idx = plan.reshape(N, -1).topk(top, dim=1).indices
    if pick_one:
        r = torch.randint(top, (N, 1), device=cost.device, generator=generator)
        idx = idx.gather(1, r)
    return cost.reshape(N, -1).gather(1, idx)
