"""A balancing method written outside the package: every uni-modal channel also fits the data.

The worked example of docs/backbones.md (second half). Per step::

    L = L_backbone + alpha * sum_m BPR(channel m)

where ``L_backbone`` is the backbone's own objective (BPR + L2 + auxiliary loss)
and channel m is the backbone fed ``inputs.only(m)`` (every other modality
mean-ablated): a modality whose channel ranks badly gets a gradient of its own.
No teacher, no gradient surgery: the smallest method that uses the seam.
"""
from __future__ import annotations

import torch.nn.functional as F

from ckdlab import register_method
from ckdlab.balance import BalanceMethod, Batch, TrainContext, backbone_step
from ckdlab.balance.channels import active_modalities, channel_margins


@register_method("channel-bpr")
class ChannelBPR(BalanceMethod):
    """Plain training plus ``alpha`` times each uni-modal channel's BPR loss.

    Parameters
    ----------
    alpha : float
        Weight of the channels' BPR losses (0: plain training).
    """

    def __init__(self, alpha: float = 0.1):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def setup(self, ctx: TrainContext, model) -> None:
        super().setup(ctx, model)
        # modalities the run itself ablated (TrainConfig.ablate) form no channel
        self.modalities = active_modalities(ctx.inputs)

    def batch_loss(self, model, inputs, batch: Batch):
        loss, *_ = backbone_step(model, inputs, batch, self.ctx.config.reg_weight)
        margins = channel_margins(model, inputs, self.modalities, batch.users, batch.pos, batch.neg)
        channel = {m: -F.logsigmoid(d).mean() for m, d in margins.items()}
        total = loss + self.alpha * sum(channel.values())
        return total, {f"bpr_{m}": float(v.detach()) for m, v in channel.items()}
