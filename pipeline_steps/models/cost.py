"""A model's inference cost: its parameter count and the FLOPs of one image's forward pass.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on torch's meta device (no memory, no
weights, no init cost): 2 x the multiply-accumulates of the matmuls and convolutions (patch embedding,
every Linear, the attention products ``q k^T`` and ``attn v``, the head); normalisation, activations and
softmax count nothing. That is the convention of the follow-up's README (docs/followup.md section 2.4):
DeiT-Tiny 2.507 G, Lift 2.537 G, WideLast 3.089 G at 224 px.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pipeline_steps.errors import UserError

__all__ = ["inference_cost"]


def inference_cost(spec_or_model: Mapping[str, Any] | nn.Module,
                   image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(parameters, flops)`` of one ``image_size`` image through the model a spec describes.

    Args:
        spec_or_model: A params model spec (``arch``, ``kwargs``; ``weights`` is ignored: the model is
            built on the meta device) or a built model (moved to nothing; a deep copy goes to meta).
        image_size: ``H`` (square) or ``(H, W)``; 3 input channels.

    Returns:
        The sum of ``numel`` over the parameters, and the FLOPs (2 x MACs) of one forward pass in eval mode.

    Raises:
        UserError: An unknown arch, kwargs the model rejects, or an image size the model cannot take.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline_steps.models.layers import check_input_size

    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if isinstance(spec_or_model, nn.Module):
        import copy

        model = copy.deepcopy(spec_or_model).to("meta")
    else:
        from pipeline_steps.models.build import meta_model

        model = meta_model(spec_or_model)
    check_input_size(model, size)
    # Without this, a view of a parameter made under no_grad (CaiT's expanded class token) requires grad but
    # has no grad_fn, and the counter's module tracker fails on it; the count does not depend on it.
    model.requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model.eval()(torch.empty(1, 3, *size, device="meta"))
    except RuntimeError as exc:  # an op without a meta kernel: not a config error, so say what to report
        raise UserError(f"could not count the FLOPs of '{type(model).__name__}' on the meta device ({exc}); "
                        "count them on a real model instead") from None
    return int(parameters), int(counter.get_total_flops())
