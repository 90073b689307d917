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


def _logsumexp_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp over ``dim``, overwriting ``x``. Terms below e^-80 of the largest are dropped: they cannot
    change a float32 sum that is at least 1, and exp of them would be denormal (slow on CPUs)."""
    m = x.amax(dim, keepdim=True)
    return x.sub_(m).clamp_(min=-80.0).exp_().sum(dim).log_().add_(m.squeeze(dim))


@torch.no_grad()
def sinkhorn_log(cost: torch.Tensor, eps: float = 0.01, max_iter: int = 200, tol: float = 1e-3,
                 groups: torch.Tensor | None = None, check_every: int | None = None) -> tuple[torch.Tensor, int]:
    """Transport plans (N, n, m) for costs (N, n, m) with uniform marginals 1/n and 1/m.

    ``groups`` (N,) long: pairs solved as one reference call (default: all pairs one group).
    Returns (plans, iterations run). Every ``check_every`` iterations (default: every one on the CPU, every
    10th on other devices, where looking costs a host sync) the pairs of groups that have stopped are set
    aside, so later iterations only compute the rest, and the loop ends when none is left. Neither changes
    the iterates: a group's pairs stop updating at the iteration its criterion is met, looked at or not.

    The iterations keep the pairs in the innermost dimension, (n, m, N): a pair's n × m entries are far too
    few for a reduction over them to use the vector units, while a reduction over n or m of this layout is
    an element-wise max or sum of contiguous rows of N (1.3x faster at the reference's sizes,
    ``benchmarks/sinkhorn_time.py``). The one cost is rounding: how a reduction orders its n or m terms may
    depend on N, so setting pairs aside can move a plan by a float's last bits.
    """
    C = cost.detach()
    N, n, m = C.shape
    if check_every is None:
        check_every = 1 if C.device.type == "cpu" else 10
    if groups is None:
        groups = torch.zeros(N, dtype=torch.long, device=C.device)
    num_groups = int(groups.max()) + 1 if N else 0
    group_size = torch.bincount(groups, minlength=num_groups).clamp(min=1).to(C.dtype)
    # The reference's update u ← ε(log μ − LSE_j((−C_ij + u_i + v_j)/ε)) + u equals, since u_i leaves the
    # j-sum, u ← ε(log μ − LSE_j((−C_ij + v_j)/ε)). In scaled potentials f = u/ε, g = v/ε, K = −C/ε:
    # f ← log μ − LSE_j(K_ij + g_j), g ← log ν − LSE_i(K_ij + f_i): the same iterates, fewer operations.
    K_all = C / -eps
    K = K_all.permute(1, 2, 0).contiguous()               # (n, m, N): pairs innermost
    log_mu = torch.log(torch.tensor(1.0 / n + 1e-8, dtype=C.dtype, device=C.device))
    log_nu = torch.log(torch.tensor(1.0 / m + 1e-8, dtype=C.dtype, device=C.device))
    f_out, g_out = C.new_zeros(n, N), C.new_zeros(m, N)    # final potentials, filled as pairs are set aside
    live = torch.arange(N, device=C.device)               # pairs still computed, and their potentials f, g
    f, g, grp = f_out, g_out, groups
    active = torch.ones(num_groups, dtype=torch.bool, device=C.device)
    work = torch.empty_like(K)
    it = 0
    for it in range(1, max_iter + 1):
        w = work.view(-1)[:K.numel()].view(K.shape)    # one work buffer for both half-steps, no allocation
        f_new = log_mu - _logsumexp_(torch.add(K, g[None], out=w), 1)             # (n, L)
        g_new = log_nu - _logsumexp_(torch.add(K, f_new[:, None], out=w), 0)      # (m, L)
        # the reference's stopping criterion per call: mean over its pairs of Σ_i |Δu_i| < tol
        err = torch.zeros(num_groups, dtype=C.dtype, device=C.device).index_add_(
            0, grp, (f_new - f).abs().sum(0)) * (eps / group_size)
        upd = active[grp]
        f = torch.where(upd, f_new, f)
        g = torch.where(upd, g_new, g)
        active &= err >= tol
        if it % check_every == 0 or it == max_iter:
            keep = active[grp]
            if not bool(keep.all()):
                done = ~keep
                f_out[:, live[done]], g_out[:, live[done]] = f[:, done], g[:, done]
                live, f, g, grp, K = live[keep], f[:, keep], g[:, keep], grp[keep], K[:, :, keep].contiguous()
                if live.numel() == 0:
                    break
    f_out[:, live], g_out[:, live] = f, g
    return torch.exp(K_all + f_out.T[:, :, None] + g_out.T[:, None, :]), it


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
