"""HoVerNet's loss (Graham et al., 2019, Eq. 1-4): np CE + Dice, hv MSE + gradient MSE inside
nuclei, nc CE + Dice; built from MONAI's DiceLoss and SobelGradients' kernels, as MONAI's HoVerNetLoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.layers import separable_filtering
from monai.transforms import SobelGradients
from torch import nn

from hovernet.config import LossConfig

__all__ = ["HoVerNetLoss"]


class HoVerNetLoss(nn.Module):
    """The weighted sum of HoVerNet's six loss terms, returned term by term.

    MONAI's ``HoVerNetLoss`` computes the same total (a test checks it) but returns only the sum
    and wants one-hot targets; this one takes index targets, skips the nc terms when a model
    has no nc branch, and returns every term so training can log them.

    Args:
        cfg: the six weights.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        # the settings of MONAI's HoVerNetLoss: Dice summed over channels, pooled over the batch
        self.dice = DiceLoss(softmax=True, smooth_dr=1e-3, smooth_nr=1e-3, reduction="sum", batch=True)
        # MONAI's HoVerNetLoss kernels (SobelGradients, size 5), applied with MONAI's
        # separable_filtering on plain tensors: the SobelGradients transform returns MetaTensors,
        # whose bookkeeping the loss and its backward would then carry
        sobel = SobelGradients(kernel_size=5)
        self.register_buffer("k_diff", sobel.kernel_diff.clone(), persistent=False)
        self.register_buffer("k_smooth", sobel.kernel_smooth.clone(), persistent=False)

    def _hv_grad(self, hv: torch.Tensor) -> torch.Tensor:
        """d/dx of the horizontal map and d/dy of the vertical map: [N, 2, H, W]."""
        d, s = self.k_diff.to(hv.dtype), self.k_smooth.to(hv.dtype)
        return torch.cat([separable_filtering(hv[:, :1], [s, d], mode="reflect"),
                          separable_filtering(hv[:, 1:], [d, s], mode="reflect")], dim=1)

    def _ce_dice(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        return F.cross_entropy(logits, target), self.dice(logits, onehot)

    def forward(self, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Args:
            pred: ``np`` logits [N, 2, H, W], ``hv`` [N, 2, H, W], optional ``nc`` logits [N, C, H, W].
            target: ``np`` long [N, H, W], ``hv`` float [N, 2, H, W], ``nc`` long [N, H, W].

        Returns:
            dict with ``loss`` (the weighted total) and the unweighted terms ``np_ce``,
            ``np_dice``, ``hv_mse``, ``hv_mse_grad`` and, with an nc branch, ``nc_ce``, ``nc_dice``.
        """
        for key in ("np", "hv"):
            if key not in pred or key not in target:
                raise ValueError(f"branch {key!r} missing from prediction or target")
        pred = {k: v.float() for k, v in pred.items()}  # losses in fp32 under autocast
        terms: dict[str, torch.Tensor] = {}
        terms["np_ce"], terms["np_dice"] = self._ce_dice(pred["np"], target["np"])
        terms["hv_mse"] = F.mse_loss(pred["hv"], target["hv"])
        # the gradient term looks only inside true nuclei, where hv has structure
        focus = (target["np"] > 0).to(pred["hv"].dtype)[:, None].expand(-1, 2, -1, -1)
        diff = (self._hv_grad(pred["hv"]) - self._hv_grad(target["hv"])) ** 2
        terms["hv_mse_grad"] = (focus * diff).sum() / (focus.sum() + 1e-8)
        if "nc" in pred:
            if "nc" not in target:
                raise ValueError("the model has an nc branch but the target has no 'nc'")
            terms["nc_ce"], terms["nc_dice"] = self._ce_dice(pred["nc"], target["nc"])
        weights = self.cfg.to_dict()
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms
