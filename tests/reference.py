"""Independent float64 references for the losses, written row by row from docs/method.md.

Nothing here imports stablerep_fast: these are what the package is tested against.
"""

import torch
from torch.utils.checkpoint import checkpoint


def multipos_ce_rows(x, y, x_labels, y_labels, scale, diag=None):
    """Mean over rows i of lse_j s_ij - mean_{j in P_i} s_ij (0 without positives), row by row.

    s_ij = scale * x_i . y_j; column diag + i is excluded from row i when diag is given.
    Differentiable (float64 autograd), so it also gives reference gradients.
    """
    losses = []
    for i in range(x.shape[0]):
        keep = [j for j in range(y.shape[0]) if diag is None or j != diag + i]
        s = scale * (y[keep] @ x[i])
        positives = [p for p, j in enumerate(keep) if int(y_labels[j]) == int(x_labels[i])]
        if not positives:
            losses.append(x[i].sum() * 0.0)
            continue
        m = s.max().detach()
        lse = m + torch.log(torch.exp(s - m).sum())
        losses.append(lse - s[positives].mean())
    return torch.stack(losses).mean()


def multipos_ce_blocks(x, y, x_labels, y_labels, scale, self_offset=None, block=1024):
    """multipos_ce_rows vectorised over blocks of rows, for N in the thousands: each block's
    [block, M] logits are recomputed in the backward (checkpoint), so memory stays
    O(block * M). tests check it against multipos_ce_rows."""
    total = x.new_zeros(())
    for i0 in range(0, x.shape[0], block):
        rows = slice(i0, i0 + block)
        total = total + checkpoint(_block_loss_sum, x[rows], y, x_labels[rows], y_labels, scale,
                                   None if self_offset is None else self_offset + i0, use_reentrant=False)
    return total / x.shape[0]


def _block_loss_sum(x, y, x_labels, y_labels, scale, self_offset):
    s = scale * (x @ y.T)
    positive = x_labels[:, None] == y_labels[None, :]
    if self_offset is not None:
        own = torch.zeros_like(positive)
        i = torch.arange(x.shape[0])
        keep = (i + self_offset >= 0) & (i + self_offset < y.shape[0])
        own[i[keep], i[keep] + self_offset] = True
        s = s.masked_fill(own, float("-inf"))
        positive &= ~own
    k = positive.sum(1)
    mean_positive = s.masked_fill(~positive, 0.0).sum(1) / k.clamp(min=1)
    return torch.where(k > 0, torch.logsumexp(s, 1) - mean_positive, 0.0).sum()


def normalize(f):
    return f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)


def multipos_con_loss(feats, labels, temperature=0.1, normalize_feats=True):
    z = normalize(feats) if normalize_feats else feats
    return multipos_ce_rows(z, z, labels, labels, 1.0 / temperature, diag=0)


def multipos_clip_loss(image_emb, text_emb, image_labels, text_labels, logit_scale):
    v, t = normalize(image_emb), normalize(text_emb)
    return 0.5 * (
        multipos_ce_rows(v, t, image_labels, text_labels, logit_scale)
        + multipos_ce_rows(t, v, text_labels, image_labels, logit_scale)
    )
