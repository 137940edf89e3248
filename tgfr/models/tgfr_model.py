"""TGFRModel: face backbone + text encoder + FCAM alignment heads + fusion, one entry point per stage.

    model = TGFRModel(TGFRConfig())
    batch = model.tokenize(captions)                       # input_ids, attention_mask (B, 24)
    aligned = model.align(images, **batch)                 # inputs of the contrastive losses
    fused = model.fuse(aligned)                            # (B, 640) identity embedding
    face = model.embed_image(images)                       # (B, 512) image-only embedding

The backbone is frozen and kept in eval mode, so its BatchNorm layers use their running
statistics: the features mean something once the backbone is trained (`tgfr train`'s fr stage)
or loaded (`model.backbone_weights`). With an untrained iResNet50's initial statistics the
activations grow through the layers until the normalized outputs below are 0 or NaN.
"""

import json
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch

from tgfr.input_paths import refuse_empty_path
from tgfr.models.fcam import ImageAlignmentHead, TextAlignmentHead
from tgfr.models.fcfm import build_fusion
from tgfr.models.freezing import KeepsFrozenPartsFixed
from tgfr.models.iresnet import IResNet, IResNetConfig
from tgfr.models.text_encoder import TextEncoder
from tgfr.validation import check_count, check_size, check_tensor


@dataclass
class TGFRConfig:
    """Everything needed to rebuild a TGFRModel (stored as JSON beside the weights).

    text_encoder: local model directory, None for the packaged all-MiniLM-L6-v2.
    dim: alignment dimension D of words, regions, sentence and global image features; the sentence
    feature is the TextCNN head's (TextAlignmentHead), made from the word features, so the text
    encoder's own sentence feature and BERT's pooler have no role (the pooler is kept fixed).
    fusion: "fcfm" (out fine_dim + 2*dim), "linear" (out fusion_out_dim) or "concat" (2*dim).
    """

    backbone: IResNetConfig = field(default_factory=IResNetConfig)
    freeze_backbone: bool = True
    text_encoder: str | None = None
    max_length: int = 24
    freeze_text_encoder: bool = False
    dim: int = 256
    text_kernel_sizes: tuple[int, ...] = (2, 3, 4)
    fusion: str = "fcfm"
    fine_dim: int = 128
    fusion_out_dim: int = 640

    def __post_init__(self) -> None:
        # A config read from an untrusted checkpoint must fail here, by name, not deep inside a layer.
        for name in ("dim", "fine_dim", "fusion_out_dim"):
            setattr(self, name, check_count(name, getattr(self, name)))
        # Checked here, not only by the text head, whose message would name its own argument (kernel_sizes).
        sizes = self.text_kernel_sizes
        if not isinstance(sizes, (list, tuple)) or not all(type(size) is int for size in sizes):
            raise TypeError(f"text_kernel_sizes must be a list of integers, got {sizes!r}")
        if not sizes or any(size < 1 for size in sizes):
            raise ValueError(f"text_kernel_sizes must be a non-empty list of positive sizes, got {list(sizes)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TGFRConfig":
        """From `to_dict`'s form (e.g. read back from JSON); keys and value types are checked, and every key
        must be there, as every tgfr has saved them: a missing max_length or freeze flag would otherwise take
        its default silently. A "sentence_pooling" key, which saved models' configs held, is ignored: it
        never had an effect."""
        if isinstance(values, dict):
            values = {key: value for key, value in values.items() if key != "sentence_pooling"}
        _check_types(cls, values, "config")
        backbone = dict(values["backbone"])
        _check_types(IResNetConfig, backbone, "config backbone")
        backbone["layers"] = tuple(backbone["layers"])
        return cls(**{**values, "backbone": IResNetConfig(**backbone),
                      "text_kernel_sizes": tuple(values["text_kernel_sizes"])})


# How config.json writes a value of each scalar field type, for the errors.
_JSON_SCALARS = {bool: "true or false", int: "an integer", str: "a string"}


def _check_types(cls: type, values: Any, where: str) -> None:
    """Checks that `values` maps every field name of dataclass `cls`, and only those, to a value of its JSON type.
    The errors say types and values in JSON's terms (lists, true, null), which config.json is written in."""
    if not isinstance(values, dict):
        given = "a list" if isinstance(values, (list, tuple)) else _as_json(values)
        raise ValueError(f"{where} must be an object of keys and values, got {given}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; expected keys among {sorted(hints)}")
    missing = sorted(set(hints) - set(values))
    if missing:
        raise ValueError(f"{where} lacks the keys {missing}")
    for name, value in values.items():
        kind = hints[name]
        if typing.get_origin(kind) is tuple:
            expected = "a list of integers"
            valid = isinstance(value, (list, tuple)) and all(type(v) is int for v in value)
        elif kind is float:
            valid, expected = type(value) in (int, float), "a number"
        elif kind in _JSON_SCALARS:
            valid, expected = type(value) is kind, _JSON_SCALARS[kind]
        elif kind == str | None:
            valid, expected = value is None or type(value) is str, "a string or null"
        else:  # a nested config, checked on its own
            valid, expected = isinstance(value, dict), "an object"
        if not valid:
            raise ValueError(f"{where} key {name!r} must be {expected}, got {_as_json(value)}")


def _as_json(value: Any) -> str:
    """`value` as JSON writes it ([true, 3], null, "16"); repr for what JSON cannot write (a from_dict caller's own
    object)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class AlignedFeatures(NamedTuple):
    """Outputs of `TGFRModel.align`, all L2-normalized along D (padded words are zero), for a
    trained or loaded backbone (see the module docstring)."""

    words: torch.Tensor  # (B, T, D), T = max_length - 2
    lengths: torch.Tensor  # (B,) int64, word t valid iff t < lengths[i]
    regions: torch.Tensor  # (B, R, D), R = backbone.num_regions, 196 at 112x112
    sentence: torch.Tensor  # (B, D)
    image_global: torch.Tensor  # (B, D)


class TGFRModel(KeepsFrozenPartsFixed):
    """Text-guided face recognition network. `pretrained_text=False` builds the text encoder with
    fresh weights from its config (a checkpoint then supplies them); config None: TGFRConfig().
    `requires_grad_(True)` leaves a frozen backbone or text encoder, and the parameters that never
    train, off."""

    def __init__(self, config: TGFRConfig | None = None, pretrained_text: bool = True):
        super().__init__()
        # A fresh default per model: training writes into model.config (freeze_backbone after fr).
        config = TGFRConfig() if config is None else config
        # Named as the config's field, not as TextEncoder's argument (name_or_path), which the caller never wrote.
        refuse_empty_path("config.text_encoder", config.text_encoder,
                          "name the text model folder, or give None for the packaged all-MiniLM-L6-v2")
        self.config = config
        self.backbone = IResNet(config.backbone, frozen=config.freeze_backbone)
        # The encoder's default "mean" sentence pooling keeps BERT's pooler in its fixed_parameters:
        # TGFR uses only the word features (the TextCNN head makes the sentence feature).
        self.text_encoder = TextEncoder(
            config.text_encoder,
            max_length=config.max_length,
            frozen=config.freeze_text_encoder,
            pretrained=pretrained_text,
        )
        self.image_head = ImageAlignmentHead(config.backbone.region_channels, config.backbone.num_features, config.dim)
        self.text_head = TextAlignmentHead(self.text_encoder.hidden_size, config.dim, config.text_kernel_sizes)
        self.fusion = build_fusion(config.fusion, config.dim, config.fine_dim, config.fusion_out_dim)

    @property
    def fused_dim(self) -> int:
        return self.fusion.out_dim

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """B >= 1 captions -> {"input_ids", "attention_mask"} (B, max_length) on the CPU."""
        return self.text_encoder.tokenize(captions)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> backbone embedding (B, num_features), not normalized.

        S = config.backbone.input_size (a run's data.image_size); values in [-1, 1], in the dtype of
        the parameters: what tgfr.data.EvalTransform(S) gives for a face crop.
        """
        return self.backbone(images).embedding

    def align(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> AlignedFeatures:
        """images (B, 3, S, S) as for `embed_image`, input_ids / attention_mask (B, L) from `tokenize`
        (one caption per image) -> AlignedFeatures (T = L - 2)."""
        check_tensor("images", images, ndim=4)
        # Checked before the backbone runs, which would otherwise spend a whole batch to fail in the text encoder
        # or the fusion.
        self.text_encoder.check_inputs(input_ids, attention_mask)
        check_size("input_ids", input_ids, 0, images.shape[0], "the batch size of images: one caption per image")
        embedding, region_map = self.backbone(images)
        image_global, regions = self.image_head(embedding, region_map)
        text = self.text_encoder(input_ids, attention_mask)
        words, sentence = self.text_head(text.words, text.lengths)
        return AlignedFeatures(words, text.lengths, regions, sentence, image_global)

    def fuse(self, aligned: AlignedFeatures) -> torch.Tensor:
        """AlignedFeatures -> fused identity embedding (B, fused_dim)."""
        return self.fusion(aligned.regions, aligned.words, aligned.lengths, aligned.image_global, aligned.sentence)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Fused identity embedding (B, fused_dim) of face-caption pairs, not normalized.

        images (B, 3, S, S): S = config.backbone.input_size, values in [-1, 1] (tgfr.data.EvalTransform(S));
        input_ids / attention_mask (B, L): `tokenize` of the B captions, one per image.
        """
        return self.fuse(self.align(images, input_ids, attention_mask))
