"""Loss functions on pairwise margins (batch means throughout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian Personalised Ranking, eq. 2: mean of -ln sigmoid(s_ui - s_uj)."""
    return bpr_margin_loss(pos_scores - neg_scores)


def bpr_margin_loss(margins: torch.Tensor) -> torch.Tensor:
    """:func:`bpr_loss` of the margins s_ui - s_uj."""
    return -F.logsigmoid(margins).mean()


def hinge_distillation(teacher_margin: torch.Tensor, student_margin: torch.Tensor) -> torch.Tensor:
    """Specific distillation, eq. 11: mean of max(dt - ds, 0).

    The student is pushed to rank the training pair at least as well as the
    teacher, not to copy it: margins above the teacher's cost nothing.
    """
    return torch.clamp(teacher_margin - student_margin, min=0).mean()


def tempered_bce_distillation(teacher_margin: torch.Tensor, student_margin: torch.Tensor, tau: float) -> torch.Tensor:
    """Generic distillation, eq. 12-13: BCE between sigmoid(dt / tau) and sigmoid(ds / tau), batch mean.

    Computed from logits for numerical stability (equal to the paper's form).
    """
    target = torch.sigmoid(teacher_margin / tau)
    return F.binary_cross_entropy_with_logits(student_margin / tau, target)


def kl_distillation(teacher_margin: torch.Tensor, student_margin: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(Bern(sigmoid(dt/tau)) || Bern(sigmoid(ds/tau))), batch mean (Table 3's "KL" variant)."""
    p = torch.sigmoid(teacher_margin / tau)
    log_q = F.logsigmoid(student_margin / tau)
    log_1mq = F.logsigmoid(-student_margin / tau)
    log_p = F.logsigmoid(teacher_margin / tau)
    log_1mp = F.logsigmoid(-teacher_margin / tau)
    return (p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)).mean()


def mse_distillation(teacher_margin: torch.Tensor, student_margin: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the margins (Table 3's "MSE" variant)."""
    return (teacher_margin - student_margin).pow(2).mean()
