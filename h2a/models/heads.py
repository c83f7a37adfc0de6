"""The head every architecture shares: pooling, the optional sex branch, dense layers.

The sex branch is the 16BitNet / BoneAgeNet design (sex -> Linear(1, 32) -> ReLU,
concatenated with the pooled image features); timm has no equivalent, so it stays
hand-written. ``forward_features`` / ``forward_head(pre_logits=...)`` follow timm's
contract so Grad-CAM, embeddings and the engine treat every backbone alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HIDDEN_FEATURES", "SEX_FEATURES", "Backbone", "H2AModel"]

SEX_FEATURES = 32
HIDDEN_FEATURES = 256


@dataclass
class Backbone:
    """What a registered builder returns: a trunk and where its feature map comes from."""

    trunk: nn.Module  # x (B, in_chans, H, W) -> feature map (B, num_features, h, w)
    num_features: int
    cam_target: str  # dotted name inside ``trunk`` of the module whose output trunk returns ("" = trunk)


class H2AModel(nn.Module):
    """Trunk + global average pooling + optional sex branch + dense head -> one scalar.

    Output for task ``boneage``: the standardised bone age (the engine de-standardises);
    for task ``sex``: a logit, positive = male (label 1).
    """

    def __init__(self, arch: str, task: str, backbone: Backbone, *, use_sex: bool,
                 dropout: float, config: dict[str, Any]) -> None:
        super().__init__()
        self.arch = arch
        self.task = task
        self.use_sex = use_sex
        self.num_features = backbone.num_features
        self.config = dict(config)  # create_model kwargs that rebuild this architecture
        self._cam_target = backbone.cam_target
        self.backbone = backbone.trunk
        self.pool = nn.AdaptiveAvgPool2d(1)
        extra = 0
        if use_sex:
            self.sex_branch = nn.Sequential(nn.Linear(1, SEX_FEATURES), nn.ReLU())
            extra = SEX_FEATURES
        self.head = nn.Sequential(
            nn.Linear(self.num_features + extra, HIDDEN_FEATURES),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN_FEATURES, 1),
        )
        nn.init.zeros_(self.head[-1].bias)
        # runs saved before the timm backbones keep loading: the trunk renames their keys
        self.register_load_state_dict_pre_hook(self._upgrade_backbone_keys)

    def _upgrade_backbone_keys(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                               *_args: Any) -> None:
        """Rename an older backbone key layout in place (the trunk's ``upgrade_state_dict``)."""
        upgraded = self.upgrade_state_dict(state_dict, prefix)
        state_dict.clear()
        state_dict.update(upgraded)

    def upgrade_state_dict(self, state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
        """A copy of ``state`` with an older backbone key layout renamed to this trunk's.

        Loading does it by itself (a load hook); a warm start, which keeps only the keys
        that match by name, calls it first so an older run still seeds the backbone.
        """
        upgrade = getattr(self.backbone, "upgrade_state_dict", None)
        head = prefix + "backbone."
        keys = [k for k in state if k.startswith(head)]
        if upgrade is None or not keys:
            return dict(state)
        out = {k: v for k, v in state.items() if not k.startswith(head)}
        for k, v in upgrade({k[len(head):]: state[k] for k in keys}).items():
            out[head + k] = v
        return out

    @property
    def cam_target_layer(self) -> nn.Module:
        """Module whose output ``forward_features`` returns (resolved by name, not stored twice)."""
        return self.backbone.get_submodule(self._cam_target)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled last feature map (B, C, h, w), as in timm: the input of the head and of CAM."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        return self.backbone(x)

    def forward_head(self, fmap: Tensor, sex: Tensor | None = None, *, pre_logits: bool = False) -> Tensor:
        """Pool the feature map, then the dense head -> (B,); as in timm, ``pre_logits=True``
        stops after pooling and returns the image embedding (B, num_features) used for
        UMAP/k-means and the out-of-distribution check. ``sex`` (B,) 0/1, 1 = male."""
        feats = torch.flatten(self.pool(fmap), 1)
        if pre_logits:
            return feats
        if self.use_sex:
            if sex is None:
                raise ValueError(
                    f"this {self.arch} model was trained with sex as an input: pass sex "
                    f"(tensor of shape (B,), 1 = male, 0 = female)"
                )
            sex = torch.as_tensor(sex, device=feats.device).reshape(-1, 1).to(feats.dtype)
            if sex.shape[0] != feats.shape[0]:
                raise ValueError(f"sex has {sex.shape[0]} values for a batch of {feats.shape[0]}")
            feats = torch.cat([feats, self.sex_branch(sex)], dim=1)
        return self.head(feats).squeeze(-1)

    def features_and_stage(self, x: Tensor, stage: int = -1) -> tuple[Tensor, Tensor]:
        """(``forward_features(x)``, the map of trunk stage ``stage``); -1 = the last map itself."""
        if stage == -1:
            y = self.forward_features(x)
            return y, y
        take = getattr(self.backbone, "features_and_stage", None)
        if take is None:
            raise ValueError(f"{self.arch}: no intermediate stages for a heat map")
        return take(x, stage)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled image embedding (B, num_features): the image part only, no sex input."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor, sex: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x), sex)
