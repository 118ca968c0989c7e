"""The three pretraining heads of FLIP (paper IV-C3..5): MLM and MTM joint reconstruction and
instance-level contrastive learning. Each reads dense inputs only, so the sparse lookups
(feature embeddings, NCE output rows) can live in sharded TorchRec tables outside."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flip_dist.models.masking import IGNORE


class MLMHead(nn.Module):
    """Eq. 5-6: q_il = g_PLM([w^_il (+) v_i]) over the vocabulary, at masked positions only.
    g_PLM is a two-layer MLP like BERT's LM head (dense, GELU, LayerNorm, decoder); as in BERT the
    decoder shares its weight with the PLM's input word embeddings when given them (`tied`),
    which saves V x D_text parameters (11.7M for BERT's 30522-token vocabulary at the default
    MiniLM's D_text = 384) and their optimizer state.
    joint=False is the ablation 'w/o joint reconstruction': no v_i, the text alone."""

    def __init__(self, d_text: int, d_tab: int, vocab_size: int, joint: bool = True,
                 tied: nn.Parameter | None = None) -> None:
        super().__init__()
        self.joint = joint
        self.transform = nn.Sequential(nn.Linear(d_text + (d_tab if joint else 0), d_text), nn.GELU(),
                                       nn.LayerNorm(d_text))
        self.decoder = nn.Linear(d_text, vocab_size)
        if tied is not None:
            if tied.shape != self.decoder.weight.shape:
                raise ValueError(f"tied weight {tuple(tied.shape)} != decoder {tuple(self.decoder.weight.shape)}")
            self.decoder.weight = tied

    def forward(self, w_hat: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """w_hat: (B, L, D_text) states of the masked text; v: (B, D_tab); labels: (B, L) with
        IGNORE off the masked positions. Returns the per-instance mean CE (Eq. 6) averaged over the
        instances that have at least one masked position (Eq. 14's 1/B sum)."""
        rows, cols = (labels != IGNORE).nonzero(as_tuple=True)
        if rows.numel() == 0:
            return w_hat.sum() * 0.0
        h = w_hat[rows, cols]                                         # (N, D_text): masked tokens only
        if self.joint:
            h = torch.cat([h, v[rows]], dim=-1)                       # Eq. 5: [w^_il (+) v_i]
        logits = self.decoder(self.transform(h))                      # (N, V)
        ce = F.cross_entropy(logits.float(), labels[rows, cols], reduction="none")
        return _mean_per_row(ce, rows, labels.shape[0])


class CrossAttention(nn.Module):
    """Eq. 7: u_i = Softmax(v^_i Q w_i^T / sqrt(D_text)) w_i, padding masked."""

    def __init__(self, d_tab: int, d_text: int) -> None:
        super().__init__()
        self.Q = nn.Parameter(torch.empty(d_tab, d_text))
        nn.init.xavier_uniform_(self.Q)
        self.scale = 1.0 / math.sqrt(d_text)

    def forward(self, v_hat: torch.Tensor, w: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bd,de,ble->bl", v_hat, self.Q, w) * self.scale     # (B, L)
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
        return torch.einsum("bl,ble->be", scores.softmax(-1), w)                  # (B, D_text)


class MTMHead(nn.Module):
    """Eq. 7-10: cross-attention over the unmasked text (Eq. 7), one two-layer GELU MLP g_ID^(f)
    per field (Eq. 8), scored against the output rows of the positive and K noise features with
    NCE (Eq. 10) instead of the softmax over all M features of Eq. 8-9.

    This module holds no output rows: they live in the NCE output table (NCEOutput in
    flip_dist/models/flip.py, a TorchRec table the runtime may shard), one row per feature id j
    of nce_dim values [o_j, b_j]: o_j (nce_dim - 1 values) is the output embedding, the last
    column b_j a per-feature bias, trained with the rest of the row. The query is
    h = [g_ID^(f)(u_i), 1], so one dot product gives the score s_j = o_j . g_ID^(f)(u_i) + b_j
    (the c_{i,f,j} of Eq. 8).

    The whole table is first drawn by its init_fn, normal(0, 1e-4) (NCE_INIT_STD in flip.py);
    then b_j is overwritten from the train counts (`nce_bias` / NCEOutput.init_bias in flip.py,
    or sharding.load_nce_bias once sharded), with q_j = max(count_j, 1) / sum(counts) and
    `model.nce_bias_init`:
      log_q (default): b_j = log q_j;
      map:             b_j = log q_j + log M, M = the number of feature ids (table rows), as in
                       the authors' MAP code.
    log(K q_j) is not part of b_j. It enters only in `nce_loss`, which is given it per candidate
    (`log_kq`, built in flip_dist/train/steps.py as log K + the noise sampler's log q_j, floored
    at the smallest log q of a drawable id) and subtracts it from every score: the NCE logit is
    s_j - log(K q_j), the standard NCE correction that Eq. 10 leaves implicit. With o_j ~ 0 at
    the start, every corrected logit is -log K under log_q (the noise prior, sigma = 1/(K+1))
    and log(M/K) under map.
    joint=False is 'w/o joint reconstruction': u_i = v^_i itself (no text, no attention) goes
    into g_ID^(f)."""

    def __init__(self, d_tab: int, d_text: int, num_fields: int, nce_dim: int, hidden: int = 256,
                 joint: bool = True) -> None:
        super().__init__()
        self.joint = joint
        d_in = d_text if joint else d_tab
        self.attend = CrossAttention(d_tab, d_text) if joint else None
        # g_ID^(f) for every field at once (Eq. 8): weights stacked by field; queries() gathers each
        # masked item's field slice and runs one batched matmul (bmm) per layer. The output layer
        # has nce_dim - 1 units: the constant 1 appended in queries() meets b_j.
        self.w1 = nn.Parameter(torch.empty(num_fields, d_in, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_fields, hidden))
        self.w2 = nn.Parameter(torch.empty(num_fields, hidden, nce_dim - 1))
        self.b2 = nn.Parameter(torch.zeros(num_fields, nce_dim - 1))
        # nn.Linear's default init applied to the stacked view (out, num_fields * in): its fan_in is
        # num_fields * in, so the bound is 1 / sqrt(num_fields * in), sqrt(num_fields) times smaller
        # than a separate nn.Linear per field would get. The biases start at zero.
        for w in (self.w1, self.w2):
            nn.init.kaiming_uniform_(w.view(-1, w.shape[-1]).T, a=math.sqrt(5))

    def queries(self, v_hat: torch.Tensor, w: torch.Tensor, attention_mask: torch.Tensor,
                masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, fields, h): for every masked (i, f), h = [g_ID^(f)(u_i), 1] of size nce_dim."""
        u = self.attend(v_hat, w, attention_mask) if self.joint else v_hat     # Eq. 7
        rows, fields = masked.nonzero(as_tuple=True)
        x = u[rows].unsqueeze(1)                                               # (N, 1, d_in)
        hid = F.gelu(torch.bmm(x, self.w1[fields]).squeeze(1) + self.b1[fields])
        h = torch.bmm(hid.unsqueeze(1), self.w2[fields]).squeeze(1) + self.b2[fields]
        return rows, fields, torch.cat([h, torch.ones_like(h[:, :1])], dim=-1)

    @staticmethod
    def nce_loss(h: torch.Tensor, out_rows: torch.Tensor, log_kq: torch.Tensor, rows: torch.Tensor,
                 batch_size: int) -> torch.Tensor:
        """Eq. 10 on corrected logits. h: (N, nce_dim) queries from `queries`; out_rows: (N, 1+K,
        nce_dim) NCE table rows [o_j, b_j] of [positive, noise...]; log_kq: (N, 1+K) log(K q_j) of
        the same ids. Logit = h . row - log(K q_j) = s_j - log(K q_j), in float32; BCE with
        target 1 for the positive and 0 for the K noise ids (a noise draw equal to the positive is
        kept and counts as noise), summed over the 1+K. Then the mean over an instance's masked
        fields, then the mean over the instances that have any (rows = each item's instance)."""
        logits = torch.einsum("nd,nkd->nk", h.float(), out_rows.float()) - log_kq
        target = torch.zeros_like(logits)
        target[:, 0] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
        return _mean_per_row(bce, rows, batch_size)


class ICLHead(nn.Module):
    """Eq. 11-13: project [CLS] and v to d with two linear layers, each followed by a normalization
    layer, and InfoNCE over their dot products in both directions with temperature tau.
    norm='layernorm' (default) is the paper's "normalization layer" with sim = dot product (and the
    official code): |z|^2 = d, so the logits reach +-d / tau. norm='l2' makes sim the cosine, whose
    loss has a floor above 0 at tau = 0.7. Measured on ML-100K (one process, the whole MiniLM,
    batch 32, 150 steps of the full objective): layernorm takes ICL from 16.6 to 1.42 (in-batch
    top-1 0.45), l2 from 3.47 (= ln 32) to 2.54 (top-1 0.80). Negatives come from every rank when a
    process group of more than one rank exists (differentiable all_gather; every rank must then
    have the same batch size); each rank's loss averages over its own rows."""

    def __init__(self, d_text: int, d_tab: int, dim: int = 128, tau: float = 0.7, norm: str = "layernorm") -> None:
        super().__init__()
        self.text_proj, self.tab_proj = nn.Linear(d_text, dim), nn.Linear(d_tab, dim)
        self.norm = norm
        self.ln_text = nn.LayerNorm(dim) if norm == "layernorm" else None
        self.ln_tab = nn.LayerNorm(dim) if norm == "layernorm" else None
        self.tau = tau
        self.last_accuracy: torch.Tensor | None = None   # the last forward's in-batch top-1 match

    def _z(self, x: torch.Tensor, proj: nn.Linear, ln: nn.LayerNorm | None) -> torch.Tensor:
        z = proj(x)
        return ln(z) if ln is not None else F.normalize(z, dim=-1)

    def forward(self, w_cls: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        z_text = self._z(w_cls, self.text_proj, self.ln_text).float()
        z_tab = self._z(v, self.tab_proj, self.ln_tab).float()
        all_text, all_tab, offset = _gather_across_ranks(z_text), _gather_across_ranks(z_tab), _rank_offset(z_text)
        target = torch.arange(z_text.shape[0], device=z_text.device) + offset
        sim_text2tab, sim_tab2text = z_text @ all_tab.T / self.tau, z_tab @ all_text.T / self.tau
        with torch.no_grad():   # in-batch top-1: does each row's own partner score highest? (logged, not trained)
            self.last_accuracy = 0.5 * ((sim_text2tab.argmax(1) == target).float().mean()
                                        + (sim_tab2text.argmax(1) == target).float().mean())
        text2tab = F.cross_entropy(sim_text2tab, target)     # Eq. 11
        tab2text = F.cross_entropy(sim_tab2text, target)     # Eq. 12
        return 0.5 * (text2tab + tab2text)                   # Eq. 13


def nce_prior_loss(num_noise: int) -> float:
    """Eq. 10's loss of a model that scores every candidate at the noise prior (sigma = 1/(K+1)):
    where MTM starts under nce_bias_init=log_q, and stays when it learns nothing (4.239 at K = 25)."""
    k = num_noise
    return math.log(k + 1) + k * math.log((k + 1) / k)


def _mean_per_row(values: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean over a row's items, then over the rows that have any (Eq. 6, 9-10 inside Eq. 14)."""
    sums = torch.zeros(batch_size, device=values.device, dtype=values.dtype).index_add_(0, rows, values)
    counts = torch.zeros(batch_size, device=values.device, dtype=values.dtype).index_add_(
        0, rows, torch.ones_like(values))
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _gather_across_ranks(z: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z), dim=0)


def _rank_offset(z: torch.Tensor) -> int:
    return torch.distributed.get_rank() * z.shape[0] if _distributed() else 0
