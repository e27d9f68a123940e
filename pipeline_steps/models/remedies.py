"""The follow-up paper's two student architectures, Lift and WideLast, as registered timm models.

Both are a timm ViT (``base_arch`` with the caller's kwargs) whose LAST block is wrapped so that the
remedy's wide map is what timm's own ``forward_intermediates(x, indices, norm=False, output_fmt="NCHW")``
returns at the last index, and whose ``norm``/``pool``/``head`` are the remedy's; ``forward`` and
``forward_head`` are timm's, unmodified (no monkey-patching). Registering them makes every spec-driven part
of the pipeline (``create_model``, ``model_depth``, ``describe_model``, checkpoint reload) work unchanged::

    {"arch": "vit_lift", "kwargs": {"base_arch": "vit_tiny_patch16_224", "wide_dim": 384, ...}, ...}

``vit_lift``
    The base ViT unchanged; after its last block every token goes through ``Linear(C_s -> C_t, no bias)``
    then ``LayerNorm(C_t, eps 1e-5)``; the classifier averages the PATCH tokens of that lifted map and
    applies a new ``Linear(C_t -> K)``. The base's final norm and head are not registered (the authors'
    code keeps them as unused parameters), so the parameter count is the inference-path count.
``vit_widelast``
    Blocks 0..D-2 at the base width; at the last block's input every token (CLS included) goes through
    ``Linear(C_s -> C_t, no bias) -> LayerNorm(C_t, eps 1e-6)``, which replaces the residual stream; then a
    pre-norm timm ``Block`` at width ``C_t``; final ``LayerNorm(C_t)``; ``Linear(C_t -> K)`` on CLS.

Definitions: docs/followup.md sections 2.2 and 2.3; docs/method.md, "Lift and WideLast".
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any, Mapping

from torch import Tensor, nn

__all__ = ["LiftBlock", "REMEDY_ARCHS", "WideLastBlock", "remedy_of", "student_spec_for", "vit_lift",
           "vit_widelast"]

#: Student architecture name (``distill.runs[].architecture``) -> the registered timm model.
REMEDY_ARCHS: dict[str, str] = {"lift": "vit_lift", "widelast": "vit_widelast"}

#: timm's factory passes these to every entrypoint; the base is built without pretrained weights.
_FACTORY_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _init_linear(layer: nn.Linear) -> nn.Linear:
    """timm's ViT init (trunc-normal std 0.02, zero bias): drawn from the caller's RNG, so a seeded
    ``create_model`` is deterministic."""
    from timm.layers import trunc_normal_

    trunc_normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class LiftBlock(nn.Module):
    """The base's last block followed by Lift's projector: ``LN(P h)`` for every token of its output.

    The projector is applied to the prefix (CLS) token too, only because the token sequence must keep one
    width; nothing reads that token (the head averages the patch tokens). This costs one token's
    projection (``C_s * C_t`` MACs) more than the authors' code, 0.004 % of the FLOPs at DeiT-Tiny scale.
    """

    def __init__(self, block: nn.Module, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block = block
        #: Read by ``layers.block_channels``: this block's output width differs from the model's embed_dim.
        self.out_channels = out_dim
        self.proj = _init_linear(nn.Linear(in_dim, out_dim, bias=False))
        # eps 1e-5: nn.LayerNorm's default, which the authors' ChannelExpansionWrapper uses.
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, C_s] -> [B, N, C_t]``."""
        return self.norm(self.proj(self.block(x)))


class WideLastBlock(nn.Module):
    """WideLast's last block: ``Block_wide(LN(P x))``; the projected stream REPLACES the residual (no
    shortcut around the projection), as in the authors' ``create_deit_tiny_heads_step``."""

    def __init__(self, block: nn.Module, in_dim: int) -> None:
        super().__init__()
        width = int(block.norm1.normalized_shape[0])
        #: Read by ``layers.block_channels``: this block's output width differs from the model's embed_dim.
        self.out_channels = width
        self.proj = _init_linear(nn.Linear(in_dim, width, bias=False))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, C_s] -> [B, N, C_t]``."""
        return self.block(self.norm(self.proj(x)))


def _layer_scale_init(block: nn.Module) -> float | None:
    """The base block's LayerScale init value (``None`` without LayerScale)."""
    return getattr(block.ls1, "init_values", None)


def _split_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    for key in _FACTORY_KEYS:
        kwargs.pop(key, None)
    return kwargs


def _build_base(base_arch: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if pretrained:
        raise ValueError("vit_lift / vit_widelast have no pretrained weights; build them with pretrained=False")
    if base_arch in REMEDY_ARCHS.values():
        raise ValueError(f"base_arch {base_arch!r} is itself a remedy; give a plain timm ViT")
    base = timm.create_model(base_arch, pretrained=False, **_split_kwargs(kwargs))
    from timm.models.vision_transformer import VisionTransformer

    if type(base) is not VisionTransformer:
        # The wrapping relies on VisionTransformer's forward_intermediates / pool / forward_head.
        raise ValueError(f"base_arch {base_arch!r} is a {type(base).__name__}, not a timm VisionTransformer")
    if base.global_pool != "token" or base.attn_pool is not None or base.num_prefix_tokens != 1:
        raise ValueError(f"base_arch {base_arch!r} must pool its CLS token (global_pool='token', one prefix token)")
    return base


def _check_wide(wide_dim: Any) -> int:
    if isinstance(wide_dim, bool) or not isinstance(wide_dim, int) or wide_dim < 1:
        raise ValueError(f"wide_dim must be a positive integer (the teacher's width), got {wide_dim!r}")
    return int(wide_dim)


def _relabel(model: nn.Module, arch: str) -> None:
    """Name the remedy in ``pretrained_cfg`` (error messages and ``model_arch`` read it)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg["architecture"] = arch
    model.pretrained_cfg = cfg


def _set_head(model: nn.Module, width: int) -> None:
    """Replace the classifier with ``Linear(width -> K)`` (timm's head init: trunc-normal, zero bias)."""
    model.num_features = model.head_hidden_size = width
    model.head = _init_linear(nn.Linear(width, model.num_classes)) if model.num_classes > 0 else nn.Identity()


def vit_lift(pretrained: bool = False, base_arch: str = "vit_tiny_patch16_224", wide_dim: int | None = None,
             **kwargs: Any) -> nn.Module:
    """Lift (the follow-up's "Lift-GAP"): the base ViT plus an endpoint projector kept at inference.

    ``blocks[-1]`` becomes :class:`LiftBlock` (block, then ``Linear(C_s -> wide_dim, no bias)`` and
    ``LayerNorm(wide_dim, eps 1e-5)``), so ``forward_intermediates`` returns the lifted map at the last
    index; ``norm`` is ``Identity``, ``global_pool`` is ``"avg"`` (patch tokens only, CLS excluded) and
    ``head`` is a new ``Linear(wide_dim -> K)``. The base's final norm and head are NOT registered, unlike
    in the authors' code where they stay as unused parameters: the parameter count is the inference-path
    count (5,983,528 at DeiT-Tiny scale with wide_dim 384 and 1000 classes, the follow-up's figure).

    Args:
        pretrained: Must be False.
        base_arch: A timm ViT name (a ``VisionTransformer`` with a CLS token).
        wide_dim: The teacher's width ``C_t`` (required).
        **kwargs: Passed to the base (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``num_classes``, ...).

    Returns:
        The model; ``embed_dim`` is the base width, ``num_features`` is ``wide_dim``.
    """
    base = _build_base(base_arch, pretrained, kwargs)
    wide = _check_wide(wide_dim)
    base.blocks[-1] = LiftBlock(base.blocks[-1], base.embed_dim, wide)
    base.norm = nn.Identity()  # the head sees the lifted map, which LiftBlock already normalised
    base.global_pool = "avg"
    base.fc_norm = nn.Identity()
    _set_head(base, wide)
    _relabel(base, "vit_lift")
    return base


def vit_widelast(pretrained: bool = False, base_arch: str = "vit_tiny_patch16_224", wide_dim: int | None = None,
                 wide_heads: int | None = None, **kwargs: Any) -> nn.Module:
    """WideLast (``heads_step``): the last block runs at the teacher's width, with no projection back.

    ``blocks[-1]`` becomes :class:`WideLastBlock`: ``Linear(C_s -> wide_dim, no bias)`` and
    ``LayerNorm(wide_dim, eps 1e-6)`` on every token (CLS included), replacing the residual stream, then a
    pre-norm timm ``Block`` of width ``wide_dim`` with the base block's MLP ratio, qkv bias, norm and
    activation; ``norm`` becomes ``LayerNorm(wide_dim)`` and ``head`` ``Linear(wide_dim -> K)`` on CLS.
    7,313,896 parameters at DeiT-Tiny scale (wide_dim 384, 1000 classes).

    Args:
        pretrained: Must be False.
        base_arch: A timm ViT name (a ``VisionTransformer`` with a CLS token).
        wide_dim: The teacher's width ``C_t`` (required).
        wide_heads: Heads of the wide block; default keeps the base's head dim (``wide_dim * num_heads /
            embed_dim``: 6 for DeiT-Tiny to 384).
        **kwargs: Passed to the base.

    Returns:
        The model; ``embed_dim`` is the base width, ``num_features`` is ``wide_dim``.
    """
    from timm.models.vision_transformer import Block, init_weights_vit_timm

    base = _build_base(base_arch, pretrained, kwargs)
    wide = _check_wide(wide_dim)
    last = base.blocks[-1]
    if type(last) is not Block:
        raise ValueError(f"base_arch {base_arch!r} has {type(last).__name__} blocks; WideLast needs timm's Block")
    heads = last.attn.num_heads
    if wide_heads is None:
        head_dim = base.embed_dim // heads
        if wide % head_dim:
            raise ValueError(f"wide_dim {wide} is not a multiple of the base's head dim {head_dim}; set wide_heads")
        wide_heads = wide // head_dim
    if isinstance(wide_heads, bool) or not isinstance(wide_heads, int) or wide_heads < 1 or wide % wide_heads:
        raise ValueError(f"wide_heads must be a positive divisor of wide_dim {wide}, got {wide_heads!r}")
    # The base block's own settings, so that only the width (and heads) change.
    eps = last.norm1.eps
    block = Block(dim=wide, num_heads=wide_heads, mlp_ratio=last.mlp.fc1.out_features / base.embed_dim,
                  qkv_bias=last.attn.qkv.bias is not None, proj_bias=last.attn.proj.bias is not None,
                  act_layer=type(last.mlp.act), norm_layer=partial(type(last.norm1), eps=eps),
                  init_values=_layer_scale_init(last))
    block.apply(init_weights_vit_timm)
    base.blocks[-1] = WideLastBlock(block, base.embed_dim)
    base.norm = type(base.norm)(wide, eps=base.norm.eps)
    _set_head(base, wide)
    _relabel(base, "vit_widelast")
    return base


def remedy_of(arch: str) -> str:
    """The student architecture name of a timm arch: ``"lift"``, ``"widelast"`` or ``"base"``."""
    return next((name for name, timm_arch in REMEDY_ARCHS.items() if timm_arch == arch), "base")


def student_spec_for(spec: Mapping[str, Any], architecture: str, teacher_width: int) -> dict:
    """The model spec of a remedy student built on the base student ``spec``.

    Args:
        spec: The base student's spec (``arch``, ``kwargs``, ``weights``).
        architecture: ``"base"`` (returns a copy of ``spec``), ``"lift"`` or ``"widelast"``.
        teacher_width: The teacher's width ``C_t`` (``wide_dim``).

    Returns:
        ``{"arch": "vit_lift", "kwargs": {"base_arch": <spec arch>, "wide_dim": C_t, **spec kwargs},
        "weights": <spec weights>}`` (``vit_widelast`` likewise).

    Raises:
        UserError: An unknown architecture.
    """
    from pipeline_steps.errors import UserError

    out = copy.deepcopy(dict(spec))
    if architecture == "base":
        return out
    if architecture not in REMEDY_ARCHS:
        raise UserError(f"unknown student architecture {architecture!r}; use base, {', '.join(REMEDY_ARCHS)}")
    kwargs = dict(out.get("kwargs") or {})
    out["kwargs"] = {"base_arch": out["arch"], "wide_dim": int(teacher_width), **kwargs}
    out["arch"] = REMEDY_ARCHS[architecture]
    return out


def _register() -> None:
    from timm.models import register_model

    # timm warns when a name is registered again (a module reload); this module registers each once.
    for fn in (vit_lift, vit_widelast):
        import timm

        if not timm.is_model(fn.__name__):
            register_model(fn)


_register()
