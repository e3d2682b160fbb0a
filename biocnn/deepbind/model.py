"""The DeepBind model on the shared backbone (Alipanahi et al., Nat. Biotechnol. 2015).

``ConvBackbone(spatial_dims=1)`` with one stage whose kernels are the motif detectors
(``kernel_size=motif_len``, ``padding="valid"``, no norm, ReLU after a learned per-motif
threshold = the conv bias), then :class:`~biocnn.heads.BindingHead` (max or max+avg pooling
over positions, optional hidden layer with dropout, one score).

Input: one-hot sequences (batch, 4, length), channels A, C, G, T, *unpadded*. The model pads
``motif_len - 1`` columns of 0.25 on each side itself, as DeepBind does, so every detector can
see a partial motif at either end and callers never have to remember the padding.

Both strands: the reverse complement of a one-hot sequence is the tensor flipped along both
the channel axis (A<->T, C<->G with channels ordered ACGT) and the position axis; the model
scores both in one batched pass and returns the larger score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biocnn.backbone import ConvBackbone
from biocnn.heads import BindingHead

PAD_VALUE = 0.25


def reverse_complement_onehot(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of one-hot (batch, 4, length) sequences, channels ACGT."""
    return x.flip(1).flip(2)


class DeepBind(nn.Module):
    """DeepBind: motif detectors -> rectification -> pooling -> (hidden layer) -> score.

    Args:
        num_motifs: number of motif detectors (convolution kernels).
        motif_len: width of each detector in bp.
        pool: ``"max"`` or ``"maxavg"`` (max and average pooling concatenated).
        hidden: hidden-layer width (DeepBind: 32), 0 for none.
        dropout: dropout on the pooled features (and the hidden layer).
        init_scale: standard deviation of the normal initial weights (DeepBind calibrates it);
            ``None`` keeps PyTorch's default initialisation.
        both_strands: score the reverse complement too and take the maximum.
    """

    def __init__(
        self,
        num_motifs: int = 16,
        motif_len: int = 24,
        pool: str = "max",
        hidden: int = 32,
        dropout: float = 0.0,
        init_scale: float | None = None,
        both_strands: bool = True,
    ):
        super().__init__()
        self.num_motifs = int(num_motifs)
        self.motif_len = int(motif_len)
        self.both_strands = bool(both_strands)
        self.backbone = ConvBackbone(
            spatial_dims=1,
            in_channels=4,
            channels=(self.num_motifs,),
            strides=(1,),
            kernel_size=self.motif_len,
            convs_per_stage=1,
            norm=None,
            act="relu",
            dropout=0.0,
            padding="valid",
        )
        self.head = BindingHead(self.num_motifs, pool=pool, hidden=hidden, dropout=dropout)
        if init_scale is not None:
            for module in self.modules():
                if isinstance(module, (nn.Conv1d, nn.Linear)):
                    nn.init.normal_(module.weight, std=init_scale)
                    nn.init.zeros_(module.bias)

    @property
    def motif_conv(self) -> nn.Conv1d:
        """The convolution whose kernels are the motif detectors (weights: motifs x 4 x motif_len)."""
        return self.backbone.stages[0].convs[0].conv

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """DeepBind's padding: ``motif_len - 1`` columns of 0.25 on each side."""
        return F.pad(x, (self.motif_len - 1, self.motif_len - 1), value=PAD_VALUE)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Rectified detector outputs on the padded sequence: (batch, motifs, length + motif_len - 1)."""
        return self.backbone(self.pad(x))[-1]

    def strand_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the given strand only: (batch,)."""
        return self.head(self.activations(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 4:
            raise ValueError(f"expected one-hot sequences of shape (batch, 4, length), got {tuple(x.shape)}")
        if not self.both_strands:
            return self.strand_scores(x)
        n = x.shape[0]
        # One pass over both strands (twice the batch) is faster than two passes.
        scores = self.strand_scores(torch.cat([x, reverse_complement_onehot(x)], dim=0))
        return torch.maximum(scores[:n], scores[n:])


def merge(models: list[DeepBind]) -> DeepBind:
    """One DeepBind model whose score is the mean of ``models``' scores on each strand.

    An ensemble as an ordinary model (so every verb can use it): the detectors are stacked and
    the heads become one block-diagonal hidden layer; a member without a hidden layer gets two
    units, ``relu(s)`` and ``relu(-s)``, whose difference is its linear score ``s``. Members must
    share ``motif_len``, pooling and strandedness. As for one model, the merged model keeps the
    larger of the two strands' (mean) scores.
    """
    if not models:
        raise ValueError("no models to merge")
    first = models[0]
    for m in models:
        if (m.motif_len, m.head.pool, m.both_strands) != (first.motif_len, first.head.pool, first.both_strands):
            raise ValueError("models to merge must share motif_len, pool and both_strands")
    linears = [[layer for layer in m.head.mlp if isinstance(layer, nn.Linear)] for m in models]
    units = [lin[0].out_features if len(lin) == 2 else 2 for lin in linears]
    total_d, total_h, k = sum(m.num_motifs for m in models), sum(units), len(models)
    maxavg = first.head.pool == "maxavg"
    merged = DeepBind(total_d, first.motif_len, first.head.pool, total_h, 0.0, None, first.both_strands)
    w1 = torch.zeros(total_h, total_d * (2 if maxavg else 1))
    b1, w2, b2 = torch.zeros(total_h), torch.zeros(1, total_h), torch.zeros(1)
    d0 = h0 = 0
    with torch.no_grad():
        for m, lin, h in zip(models, linears, units):
            d = m.num_motifs
            merged.motif_conv.weight[d0 : d0 + d] = m.motif_conv.weight
            merged.motif_conv.bias[d0 : d0 + d] = m.motif_conv.bias
            # The member's feature columns in the merged layout ([avg of all, max of all] for maxavg).
            cols = list(range(d0, d0 + d)) + ([total_d + c for c in range(d0, d0 + d)] if maxavg else [])
            if len(lin) == 2:
                w1[h0 : h0 + h, cols] = lin[0].weight
                b1[h0 : h0 + h] = lin[0].bias
                w2[0, h0 : h0 + h] = lin[1].weight[0] / k
                b2 += lin[1].bias / k
            else:
                w1[h0, cols], w1[h0 + 1, cols] = lin[0].weight[0], -lin[0].weight[0]
                b1[h0], b1[h0 + 1] = lin[0].bias[0], -lin[0].bias[0]
                w2[0, h0], w2[0, h0 + 1] = 1.0 / k, -1.0 / k
            d0, h0 = d0 + d, h0 + h
        out = [layer for layer in merged.head.mlp if isinstance(layer, nn.Linear)]
        out[0].weight.copy_(w1)
        out[0].bias.copy_(b1)
        out[1].weight.copy_(w2)
        out[1].bias.copy_(b2)
    return merged.eval()
