"""SSIM as torchmetrics computes it, without importing torchmetrics (its metric zoo: 0.5-3 s).

``ssim_full`` restates ``structural_similarity_index_measure(..., return_full_image=True)[1]`` op
for op, so that its float32 numbers are the same bit for bit (tests/test_health_fast.py compares
against torchmetrics); the image-health cues (``metrics.health``) excuse colour changes where the
local SSIM of L* says the twin's structure survives.
"""
from __future__ import annotations

from typing import Any

SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03     # torchmetrics' defaults (Wang et al.)


def ssim_full(preds: Any, target: Any, data_range: float = 1.0) -> Any:
    """torchmetrics' ``structural_similarity_index_measure(preds, target, data_range=data_range,
    return_full_image=True)[1]`` (Gaussian window, sigma 1.5, 11 px), restated op for op so that
    its float32 numbers are the same bit for bit (tests/test_health_fast.py compares) without
    importing torchmetrics, which takes 0.5-3 s (it imports its whole metric zoo)."""
    import torch  # noqa: PLC0415
    from torch.nn import functional as F  # noqa: N812, PLC0415

    dtype, device = preds.dtype, preds.device
    c1, c2 = pow(SSIM_K1 * data_range, 2), pow(SSIM_K2 * data_range, 2)
    size = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
    pad = (size - 1) // 2
    preds = F.pad(preds, (pad, pad, pad, pad), mode="reflect")
    target = F.pad(target, (pad, pad, pad, pad), mode="reflect")
    dist = torch.arange(start=(1 - size) / 2, end=(1 + size) / 2, step=1, dtype=dtype,
                        device=device)
    gauss = torch.exp(-torch.pow(dist / SSIM_SIGMA, 2) / 2)
    gauss = (gauss / gauss.sum()).unsqueeze(dim=0)
    kernel = torch.matmul(gauss.t(), gauss).expand(preds.size(1), 1, size, size)
    inputs = torch.cat((preds, target, preds * preds, target * target, preds * target))
    outputs = F.conv2d(inputs, kernel, groups=preds.size(1)).split(preds.shape[0])
    mu_pred_sq, mu_target_sq = outputs[0].pow(2), outputs[1].pow(2)
    mu_pred_target = outputs[0] * outputs[1]
    sigma_pred_sq = torch.clamp(outputs[2] - mu_pred_sq, min=0.0)
    sigma_target_sq = torch.clamp(outputs[3] - mu_target_sq, min=0.0)
    sigma_pred_target = outputs[4] - mu_pred_target
    upper = 2 * sigma_pred_target.to(dtype) + c2
    lower = (sigma_pred_sq + sigma_target_sq).to(dtype) + c2
    return ((2 * mu_pred_target + c1) * upper) / ((mu_pred_sq + mu_target_sq + c1) * lower)
