"""Supervised-contrastive loss of ICFIL (paper Eq. 7; Khosla et al. 2020).

ICFIL pulls each *real* support image towards the *pseudo* images of its class
and pushes it away from the pseudo images of the other classes, so that the
backbone keeps what real and synthesised images share (paper §4.3). Unlike
Khosla et al.'s SupCon, anchors and candidates are two different sets: the
anchors are the real support images, the candidates (positives and negatives
alike) are the pseudo images only, so the denominator runs over pseudo images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supcon_loss(anchors: Tensor, anchor_labels: Tensor, candidates: Tensor,
                candidate_labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Eq. 7: mean over anchors a of ``-mean_{p in P(a)} log softmax_j(z_a.z_j/t)[p]``.

    Args:
        anchors: features ``[..., A, D]`` of the real support images.
        anchor_labels: ``[..., A]`` integer labels.
        candidates: features ``[..., J, D]`` of the pseudo images.
        candidate_labels: ``[..., J]`` integer labels.
        temperature: ``t`` of Eq. 7 (0.1 in the paper).

    Returns:
        The loss per leading index ``[...]`` (a scalar for unbatched input).
        Features are L2-normalised here, so callers pass raw embeddings.
        Anchors whose label has no pseudo image are left out of the mean.

    Example:
        >>> z = torch.eye(2)
        >>> supcon_loss(z, torch.tensor([0, 1]), z, torch.tensor([0, 1]), 1.0)
        tensor(0.3133)
    """
    za = F.normalize(anchors, dim=-1)
    zc = F.normalize(candidates, dim=-1)
    logits = za @ zc.transpose(-1, -2) / temperature  # [..., A, J]
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    positive = (anchor_labels.unsqueeze(-1) == candidate_labels.unsqueeze(-2)).to(log_prob.dtype)
    count = positive.sum(-1)  # [..., A]
    per_anchor = -(log_prob * positive).sum(-1) / count.clamp_min(1)
    has_positive = (count > 0).to(log_prob.dtype)
    return (per_anchor * has_positive).sum(-1) / has_positive.sum(-1).clamp_min(1)
