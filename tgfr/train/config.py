"""Run configuration: nested dataclasses, TOML presets, `key=value` overrides, TOML output.

A preset is a named TOML file shipped inside the package (tgfr/train/presets/<name>.toml, read
with importlib.resources so an installed wheel finds it) or any path to a TOML file; it must set
every key (presets are written out in full so a reader sees every value), and unknown keys are
errors.
Overrides use dotted keys and TOML values: `fr.steps=50`, `data.manifest="m.jsonl"`,
`align.supervision=weak` (a bare word is read as a string).
"""

import contextlib
import copy
import dataclasses
import datetime
import functools
import math
import os
import re
import shlex
import tomllib
import typing
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import torch

from tgfr.data.degrade import check_recipe_fits, parse_recipe
from tgfr.data.synthetic import GENERATOR_VERSION, SIZE_LIMITS as SYNTHETIC_SIZE_LIMITS
from tgfr.input_paths import file_problem, refuse_empty_path
from tgfr.output_paths import temporary_name
from tgfr.text_formats import check_utf8, parse_toml
from tgfr.validation import SEED_LIMIT, check_choice, check_positive

PRESET_DIR: Traversable = files("tgfr.train") / "presets"
STAGES = ("fr", "align", "fuse")
# The backbone takes any side >= 16, but its fc flattens the last map of (side / 16)^2 cells, so its
# weights grow with the square of the side: at 1024 (FFHQ's and CelebA-HQ's size, the largest face
# sets in common use) the default config's fc (iresnet_small, width 16, 128 features) already holds
# 67M weights and insightface's iresnet50 (width 64, 512 features) 1G. A larger side is a typo that
# would otherwise fail with an allocation error once training starts.
MAX_IMAGE_SIZE = 1024
# The settings that name a file or folder (empty: none). A run's config.toml holds them absolute, so that
# `tgfr evaluate` and `--resume` find the same files from any directory.
PATH_KEYS = ("data.manifest", "data.cache_dir", "model.backbone_weights", "model.text_encoder")


@dataclass
class DataConfig:
    """manifest: a manifest path; empty = the embedded synthetic dataset (generated into the cache),
    whose test split gets a degraded copy test_degraded made with `degradation` (and from synthetic_version 4
    its val split val_degraded: tgfr.data.synthetic.degraded_splits).
    train_degradation, train_degrade_p: every stage degrades a training image with this recipe with
    this probability. One setting for all stages on purpose: the evaluation compares the fr stage's
    backbone (image-only) with the fused model on degraded probes, and that comparison measures what
    captions add only when both saw the same degradation augmentation.
    identities_per_batch x images_per_identity: the global batch (split over ranks).
    synthetic_version: the synthetic generator's version (tgfr.data.synthetic.GENERATOR_VERSION is the
    newest), recorded in the run's config.toml so that evaluating or resuming it reads the data it was
    trained on, whatever the newest version is by then."""

    manifest: str = ""
    synthetic_identities: int = 300
    synthetic_images_per_identity: int = 8
    synthetic_captions_per_image: int = 5
    synthetic_seed: int = 0
    synthetic_version: int = GENERATOR_VERSION
    degradation: str = "down24+celeba"
    train_degradation: str = "down24+celeba"
    train_degrade_p: float = 0.5
    cache_dir: str = ""
    train_split: str = "train"
    image_size: int = 56
    identities_per_batch: int = 16
    images_per_identity: int = 4
    loader_workers: int = 0


@dataclass
class ModelConfig:
    """backbone_weights: a released backbone (.pth / .safetensors) or a saved tgfr model's model.safetensors
    (its backbone part); then the fr stage only loads it.
    fusion: "fcfm" (fine_dim + 2 * dim wide), "linear" (a linear layer over [global image | sentence],
    fusion_out_dim wide) or "concat" ([global image | sentence], 2 * dim wide, no weights); fine_dim
    is read by fcfm only, fusion_out_dim by linear only (its default is fcfm's default width)."""

    backbone: str = "iresnet_small"
    width: int = 16
    num_features: int = 128
    dropout: float = 0.2
    backbone_weights: str = ""
    text_encoder: str = ""
    max_length: int = 24
    freeze_text_encoder: bool = True
    dim: int = 64
    fusion: str = "fcfm"
    fine_dim: int = 32
    fusion_out_dim: int = 160


@dataclass
class OptimConfig:
    """optimizer: adamw or sgd; schedule: cosine (to lr * min_lr_ratio at the stage's last step) or constant,
    after a linear warmup of warmup_steps (0: none; less than the stage's steps). grad_clip: maximum
    gradient norm, 0 for no clipping."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 10
    min_lr_ratio: float = 0.01
    grad_clip: float = 5.0


@dataclass
class FRStageConfig:
    """Face backbone: ce_weight * (ArcFace(view1) + ArcFace(view2)) + coreface_weight * CoReFace
    (released CoReFace: 0.5, 0.05). steps: optimizer steps, at least 1 in every stage (a stage that
    should not train is left out of TrainConfig.stages)."""

    steps: int = 400
    arcface_scale: float = 32.0
    arcface_margin: float = 0.3
    ce_weight: float = 0.5
    coreface_weight: float = 0.05
    coreface_scale: float = 64.0
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class AlignStageConfig:
    """FCAM: wrcl_weight*WRCL + cicl_weight*CICL + intra_weight*intra-caption + identity_weight*identity.

    supervision: "identity" (labels: class masking, ArcFace on the sentence and global image
    features, which read identity_scale and identity_margin) or "weak" (no labels: the
    dual-granularity association, with num_prototypes visual identity prototypes, replaces the
    identity term). Each mode reads only its own keys.
    word_softmax: softmax of each region's word-region products over the caption's words before gamma1's softmax
    over regions (SPEC section 2 step 2, TGFR's). With unit word and region vectors that are alike (as trained on
    the embedded set) it keeps a word's region weights within a few per cent of 1/R at gamma1 = 4; off, with a
    larger gamma1, they can depart further from even.
    text_encoder_lr_scale: with model.freeze_text_encoder = false, the pretrained text encoder trains at this times
    optim.lr (same schedule), the heads at optim.lr: at the heads' rate its features collapse within 100 steps.
    """

    steps: int = 300
    supervision: str = "identity"
    wrcl_weight: float = 1.0
    cicl_weight: float = 2.0
    intra_weight: float = 1.0
    identity_weight: float = 1.0
    gamma1: float = 4.0
    word_softmax: bool = True
    gamma2: float = 5.0
    gamma3: float = 10.0
    cicl_scale: float = 10.0
    intra_scale: float = 10.0
    identity_scale: float = 32.0
    identity_margin: float = 0.3
    num_prototypes: int = 128
    text_encoder_lr_scale: float = 0.01
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3))


@dataclass
class FuseStageConfig:
    """FCFM trained with ArcFace on the fused embedding (focal form as TGFR when focal = true)."""

    steps: int = 200
    arcface_scale: float = 32.0
    arcface_margin: float = 0.3
    focal: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)


# The longest file of the report that a report name names (tgfr.evaluation.run writes roc_, cmc_ and
# attention_<name>.png, each first under its temporary_name), and the longest file name that Linux's and
# most filesystems take (NAME_MAX, bytes).
LONGEST_REPORT_FILE = "attention_{}.png"
NAME_MAX = 255
# evaluation.protocol's choices, which tgfr.evaluation.protocols scores.
EVALUATION_PROTOCOLS = ("all_pairs", "pairs")


@dataclass
class EvaluationConfig:
    """splits: report name -> manifest split; a report name names files (roc_<name>.png), so it is
    non-empty, has no path separator, NUL or line break, and (check_report_names_fit) the temporary
    name under which attention_<name>.png is written fits NAME_MAX.
    protocol: all_pairs (every pair of the split) or pairs (TGFR's per-subject genuine +
    impostor_subjects impostors, tgfr.data; at least 1).
    controls: also score text only and TGFR with another identity's captions (tgfr.evaluation.embeddings),
    which tell whether TGFR's gain comes from what a caption says of the face."""

    splits: dict[str, str] = field(default_factory=lambda: {"clean": "test", "degraded": "test_degraded"})
    protocol: str = "all_pairs"
    impostor_subjects: int = 399
    gallery_per_subject: int = 1
    bootstrap_resamples: int = 1000
    max_rank: int = 20
    batch_size: int = 128
    heatmap_captions: int = 4
    controls: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError naming the first setting out of its range. Run when the table is built, so that a bad
        value (e.g. from `tgfr evaluate --set`) fails before any embedding is computed, and by
        TrainConfig.check, so that `train` refuses a script's change after load_config
        (config.evaluation.max_rank = 0) instead of writing a config.toml `tgfr evaluate` refuses."""
        # Built in Python (tgfr.evaluation, a script), the table skips TrainConfig's type check: a list or a
        # string failed at .values() naming nothing.
        if (not isinstance(self.splits, dict) or not self.splits
                or not all(isinstance(s, str) and s for s in self.splits.values())):
            raise ValueError(f"evaluation.splits must map report names to non-empty split names, got {self.splits!r}")
        # A line break would also break report.md's lines (a blank line ends an image link, a newline a
        # heading); a lone surrogate has no UTF-8 bytes, so it names no file.
        bad_names = [name for name in self.splits
                     if not isinstance(name, str) or not name
                     or any(c in "/\\\0\n\r" or unicodedata.category(c) == "Cs" for c in name)]
        if bad_names:
            raise ValueError(f"evaluation.splits: report names name the report's files (roc_<name>.png), so they must "
                             f"be non-empty and hold no '/', '\\', NUL, line break or lone surrogate; got {bad_names} "
                             f"in {self.splits!r}")
        # Upper bounds far past any use, as TrainConfig's sizes have: a larger bootstrap_resamples passed and
        # then failed inside numpy (a (resamples, subjects) array) once the first split was embedded.
        bounds = {"impostor_subjects": (0, 2**20), "gallery_per_subject": (1, 2**20),
                  "bootstrap_resamples": (0, 10**6 + 1), "max_rank": (1, 2**20), "batch_size": (1, 2**20),
                  "heatmap_captions": (0, 2**10)}
        for name, (low, high) in bounds.items():
            _check_integer(f"evaluation.{name}", getattr(self, name), low, high)
        check_choice("evaluation.protocol", self.protocol, EVALUATION_PROTOCOLS)
        # `if evaluation.controls` would take "no" or 1 for a choice; a table built in Python skips the TOML type check.
        if not isinstance(self.controls, bool):
            raise ValueError(f"evaluation.controls must be true or false, got {self.controls!r}")
        if self.protocol == "pairs" and self.impostor_subjects < 1:  # the pairs would hold no impostor pair
            raise ValueError(f"evaluation.impostor_subjects must be >= 1 with evaluation.protocol = \"pairs\", "
                             f"got {self.impostor_subjects}")

    def check_report_names_fit(self) -> None:
        """Refuses report names whose files cannot be written: run by a fresh training (load_config,
        train) and by an evaluation before its work, not whenever a config is read, so that a run an
        earlier tgfr started with a longer name (it allowed 241 bytes) can still be resumed."""
        # Each file is written under a longer temporary name first (write_atomically): the name that
        # fits only at its final length fails after all the work, once the embeddings are computed.
        temporary_extra = len(temporary_name("").encode("utf-8"))
        room = NAME_MAX - len(LONGEST_REPORT_FILE.format("").encode("utf-8")) - temporary_extra
        long_names = [name for name in self.splits if len(name.encode("utf-8")) > room]
        if long_names:
            raise ValueError(f"evaluation.splits: report names name the report's files, the longest "
                             f"{LONGEST_REPORT_FILE.format('<name>')}, which is written under a temporary name "
                             f"{temporary_extra} bytes longer that must fit a file name ({NAME_MAX} bytes), "
                             f"so a name takes at most {room} bytes in UTF-8; got "
                             + ", ".join(f"{name[:16]!r}... ({len(name.encode('utf-8'))} bytes)"
                                         for name in long_names))


@dataclass
class TrainConfig:
    """device: auto (cuda when available), cpu or cuda; precision: auto (bf16 autocast on GPU,
    fp32 on CPU), fp32 or bf16. threads: torch CPU threads (0: torch's default). stages: the
    stages to run, a non-empty subsequence of fr, align, fuse in that order."""

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    stages: list[str] = field(default_factory=lambda: ["fr", "align", "fuse"])
    checkpoint_every: int = 50
    log_every: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fr: FRStageConfig = field(default_factory=FRStageConfig)
    align: AlignStageConfig = field(default_factory=AlignStageConfig)
    fuse: FuseStageConfig = field(default_factory=FuseStageConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError naming the first setting of the wrong type or out of its range. Run when a config is
        built and again by `train`: a script that changes a built config (config.fr.ce_weight = -1.0)
        would otherwise train on the unchecked value and write a config.toml that --resume refuses."""
        # Imported here, not with the module: they load torch and transformers (seconds), which
        # `tgfr --help` and a usage error should not wait for.
        from tgfr.losses.identity_heads import MAX_MARGIN
        from tgfr.models import IRESNET_LAYERS
        from tgfr.models.fcfm import FUSIONS
        from tgfr.losses.word_region import logits_fit_float32
        from tgfr.ops.word_region import GAMMA_MAX

        # Checked whenever a config is built (preset, --set, a run's config.toml), so a bad value stops
        # --print-config and the start of training with its key, not a later stage after hours of training.
        # The types too: a config built in Python (a script calling tgfr.train.run.train) skips _build, and
        # took focal = "no" as true.
        _check_types(self)
        check_utf8("", self)
        self.evaluation.check()
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        # align reads the backbone fr trains (run first, it would train the still unfrozen backbone
        # itself) and fuse combines align's features: any other order trains on untrained parts.
        if not self.stages or self.stages != [stage for stage in STAGES if stage in self.stages]:
            raise ValueError(f"stages must be distinct names among fr, align, fuse, at least one, in that order; "
                             f"got {self.stages}")
        check_choice("align.supervision", self.align.supervision, ("identity", "weak"))
        check_choice("model.backbone", self.model.backbone, tuple(IRESNET_LAYERS))
        check_choice("model.fusion", self.model.fusion, FUSIONS)
        # Upper bounds far past any use: larger values passed this check and then failed inside torch or numpy
        # (an integer overflow, an allocation of terabytes), with a traceback naming no setting.
        # An interval or warm-up is checked only against the 64-bit integers that TOML promises a reader: runs
        # set checkpoint_every = 10^15 to checkpoint at the stage ends alone, and their config.toml must load.
        step_limit, toml_limit = 2**48, 2**63
        bounds = {"threads": (0, 4097), "checkpoint_every": (1, toml_limit), "log_every": (1, toml_limit),
                  **{f"data.synthetic_{name}": (1, limit + 1) for name, limit in SYNTHETIC_SIZE_LIMITS.items()},
                  "data.identities_per_batch": (1, 2**20), "data.images_per_identity": (1, 2**20),
                  "data.loader_workers": (0, 1025), "model.width": (1, 2**16), "model.num_features": (1, 2**16),
                  "model.max_length": (3, 2**16), "model.dim": (1, 2**16), "model.fine_dim": (1, 2**16),
                  "model.fusion_out_dim": (1, 2**16),
                  **{f"{stage}.steps": (1, step_limit) for stage in STAGES}, "align.num_prototypes": (1, 2**20),
                  **{f"{stage}.optim.warmup_steps": (0, toml_limit) for stage in STAGES}}
        for key, (low, high) in bounds.items():
            _check_integer(key, self._get(key), low, high)
        # numpy's global generator takes seeds below 2^32 (tgfr.train.seeds): a larger one would fail
        # only once training has started.
        for key in ("seed", "data.synthetic_seed"):
            _check_integer(key, self._get(key), 0, SEED_LIMIT)
        _check_integer("data.synthetic_version", self.data.synthetic_version, 1, GENERATOR_VERSION + 1)
        _check_integer("data.image_size", self.data.image_size, 16, MAX_IMAGE_SIZE + 1)
        for key in ("data.train_degrade_p", "fr.optim.min_lr_ratio", "align.optim.min_lr_ratio",
                    "fuse.optim.min_lr_ratio"):
            _check_range(key, self._get(key), 0.0, 1.0)
        _check_range("model.dropout", self.model.dropout, 0.0, 1.0, high_open=True)
        # The ops and losses take these in float32 and refuse a larger one (GAMMA_MAX, float32's maximum) only
        # when called, after earlier stages trained, or turn it into inf and a NaN loss; a loss weight past it
        # makes its stage's loss inf at the first step ("loss is not finite"), after the stages before it trained.
        for key in ("fr.arcface_scale", "fr.coreface_scale", "align.gamma1", "align.gamma2", "align.gamma3",
                    "align.cicl_scale", "align.intra_scale", "align.identity_scale", "fuse.arcface_scale"):
            check_positive(key, self._get(key), GAMMA_MAX)
        for key in ("fr.ce_weight", "fr.coreface_weight", "align.wrcl_weight", "align.cicl_weight",
                    "align.intra_weight", "align.identity_weight"):
            _check_range(key, self._get(key), 0.0, GAMMA_MAX)
        check_positive("align.text_encoder_lr_scale", self.align.text_encoder_lr_scale, 1.0)
        if not logits_fit_float32(self.align.gamma2, self.align.gamma3, self.model.max_length - 2):
            raise ValueError(f"align.gamma3 * (align.gamma2 + log(model.max_length - 2)) must be at most "
                             f"{GAMMA_MAX / 2:g} (half float32's maximum: WRCL's logits and their differences), got "
                             f"align.gamma2 = {self.align.gamma2:g}, align.gamma3 = {self.align.gamma3:g}, "
                             f"model.max_length = {self.model.max_length}")
        for key in ("fr.arcface_margin", "align.identity_margin", "fuse.arcface_margin"):
            _check_range(key, self._get(key), 0.0, MAX_MARGIN, high_open=True)
        for key in ("data.degradation", "data.train_degradation"):
            try:
                parse_recipe(self._get(key))
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
        for stage in STAGES:
            optim = getattr(self, stage).optim
            check_choice(f"{stage}.optim.optimizer", optim.optimizer, ("adamw", "sgd"))
            check_choice(f"{stage}.optim.schedule", optim.schedule, ("cosine", "constant"))
            check_positive(f"{stage}.optim.lr", optim.lr)
            _check_range(f"{stage}.optim.weight_decay", optim.weight_decay, 0.0, math.inf, high_open=True)
            _check_range(f"{stage}.optim.momentum", optim.momentum, 0.0, 1.0, high_open=True)
            _check_range(f"{stage}.optim.grad_clip", optim.grad_clip, 0.0, math.inf, high_open=True)

    def check_training_recipe(self) -> None:
        """Checks that make a fresh training's recipe sound, run by load_config and by a fresh `train`,
        not for a run's own config.toml: a run trained before these checks existed must stay
        evaluable and resumable (a resume runs check_stage_recipes for the stages it starts)."""
        self.evaluation.check_report_names_fit()
        self.check_stage_recipes(self.stages)
        if not self.data.manifest:
            from tgfr.data.synthetic import fewest_identities
            from tgfr.data.synthetic_faces import OUTPUT_SIZE

            # Else found once the whole set is generated (data.degradation), or at a training step.
            for key in ("data.degradation", "data.train_degradation"):
                try:
                    check_recipe_fits(self._get(key), OUTPUT_SIZE, OUTPUT_SIZE)
                except ValueError as error:
                    raise ValueError(f"{key} = {self._get(key)!r} for the synthetic faces: {error}") from None

            # The synthetic set splits its identities by SyntheticConfig's default fractions, and refuses
            # a count that leaves a split without one only once training generates it; the fractions stay
            # (changing them would change every preset's dataset). A recipe check: a run an earlier tgfr
            # trained on fewer stays readable (tgfr evaluate --manifest evaluates it on other data).
            synthetic_minimum = fewest_identities()
            if self.data.synthetic_identities < synthetic_minimum:
                raise ValueError(f"data.synthetic_identities must be at least {synthetic_minimum} without a "
                                 f"data.manifest (fewer leave the synthetic dataset's val or test split without "
                                 f"an identity), got {self.data.synthetic_identities}")

    def check_stage_recipes(self, stages: Iterable[str]) -> None:
        """The checks of check_training_recipe that judge stages, for those of `stages` (names in self.stages):
        a resume runs them for the stages it starts, which have no trained state that a newer check could
        make unresumable (a stage added to a finished run's config.toml included)."""
        stages = list(stages)
        # A warm-up of the whole stage (or more) trains it below or barely at the full rate, never down the
        # cosine: a mistake, typically steps cut for a short run. The last warm-up step takes the full rate,
        # so warmup_steps = steps - 1 keeps it for the last two steps, with nothing left to decay. Only the
        # stages that train count: a stage left out (or fr loading model.backbone_weights) has no schedule.
        for stage in self.trained_stages:
            steps, warmup = getattr(self, stage).steps, getattr(self, stage).optim.warmup_steps
            if stage in stages and warmup >= steps:
                raise ValueError(f"{stage}.optim.warmup_steps = {warmup} must be less than {stage}.steps = {steps} "
                                 f"(the warm-up would take the whole stage)")
        # Every term of weight 0 is skipped: the stage would train nothing, and log a loss of 0 at every step.
        if "fr" in stages and "fr" in self.trained_stages and not (self.fr.ce_weight or self.fr.coreface_weight):
            later = " and ".join(stage for stage in self.stages if stage != "fr")
            consequence = f" and {later} would learn on a random, frozen backbone" if later else ""
            raise ValueError(f"fr: both loss weights (fr.ce_weight, fr.coreface_weight) are 0, so the stage would "
                             f"train nothing{consequence}: give one a weight")
        weights = ("wrcl_weight", "cicl_weight", "intra_weight", "identity_weight")
        if "align" in stages and not any(getattr(self.align, weight) for weight in weights):
            raise ValueError(f"align: every loss weight ({', '.join(f'align.{weight}' for weight in weights)}) is 0, "
                             "so the stage would train nothing: give one a weight, or leave align out of stages")
        # With identity supervision the align stage's word-region and caption-image losses mask every
        # pair of one identity: a batch of one identity leaves them no pair and they are 0 at every
        # step. (fr's ArcFace needs no second identity; CoReFace then has no negative but still pulls
        # the two views together, and the fuse stage is ArcFace alone.)
        if "align" in stages and self.align.supervision == "identity" and self.data.identities_per_batch < 2:
            raise ValueError(f"data.identities_per_batch must be at least 2 when the align stage runs with "
                             f"align.supervision = \"identity\" (its contrastive losses mask the pairs of one "
                             f"identity), got {self.data.identities_per_batch}")
        # Only fr trains the backbone, and align and fuse keep it frozen: without fr or released weights they
        # would learn on the features of a random backbone, a run tgfr evaluate refuses.
        if "fr" not in self.stages and not self.model.backbone_weights and {"align", "fuse"} & set(stages):
            raise ValueError(f"stages = {self.stages} leave out fr, so model.backbone_weights must name a trained "
                             f"backbone (without one, align and fuse would learn on a random, frozen backbone)")
        # fuse keeps the alignment heads frozen and fuses their features: model.backbone_weights holds a backbone
        # alone, so without align they stay random, a run tgfr evaluate refuses. fr alone (a backbone for
        # model.backbone_weights) and fr + align stay allowed.
        if "fuse" in stages and "align" not in self.stages:
            raise ValueError(f"stages = {self.stages} run fuse without align, which trains the alignment heads that "
                             f"fuse reads (without it, fuse would learn on their random, frozen features)")

    def with_absolute_paths(self) -> "TrainConfig":
        """A copy whose relative PATH_KEYS settings are made absolute against the current directory
        (not resolved: a symlink or `..` in them keeps its meaning), a leading ~ or ~user expanded to that
        home folder. A ValueError names the key when the current directory's name is not UTF-8, which
        config.toml cannot hold."""
        absolute = copy.deepcopy(self)
        for key in PATH_KEYS:
            section, name = key.split(".")
            value = getattr(getattr(absolute, section), name)
            if value:
                # The shell leaves `--set data.cache_dir=~/x` as typed (the dot makes it no assignment): taken
                # as relative, it made a folder named `~` in the current directory, and a `rm -rf ~/x` meant for
                # that folder removes the home folder's instead.
                try:
                    expanded = Path(value).expanduser()
                except RuntimeError:  # "Could not determine home directory.", for ~user of no such user
                    raise ValueError(f"{key} = {value!r}: its leading ~ names no user's home folder here") from None
                setattr(getattr(absolute, section), name, str(expanded.absolute()))
                check_utf8(key, getattr(getattr(absolute, section), name))
        return absolute

    @property
    def trained_stages(self) -> list[str]:
        """The stages of `stages` that take optimizer steps (fr only loads model.backbone_weights when set)."""
        return [stage for stage in self.stages if not (stage == "fr" and self.model.backbone_weights)]

    def _get(self, key: str) -> Any:
        """The value of a dotted key, e.g. "fr.optim.lr"."""
        value = self
        for name in key.split("."):
            value = getattr(value, name)
        return value


def _check_integer(key: str, value: int, low: int, high: int) -> None:
    """An integer with low <= value < high."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}), got {value!r}")


def _check_range(key: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    """low <= value <= high (value < high when high_open); NaN is outside every range."""
    if not (low <= value < high if high_open else low <= value <= high):
        raise ValueError(f"{key} must lie in [{low}, {high}{')' if high_open else ']'}, got {value}")


def _build(cls: type, values: dict[str, Any], where: str, complete: bool) -> Any:
    """Dataclass `cls` from a TOML table, checking keys and value types."""
    if not isinstance(values, dict):
        raise ValueError(f"{where.removesuffix('.') or 'config'} must be a table, got {values!r}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; "
                         f"{where.removesuffix('.') or 'the top level'} accepts {names}")
    missing = [name for name in names if name not in values]
    if complete and missing:
        raise ValueError(f"config is missing key(s) {[f'{where}{k}' for k in missing]} (presets set every key)")
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        kind, value, key = hints[name], values[name], f"{where}{name}"
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{key}.", complete)
        else:
            kwargs[name] = _check_value(key, kind, value)
    return cls(**kwargs)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> type of the config dataclass `cls` (cached: TrainConfig.__post_init__ reads them for
    every config built)."""
    return typing.get_type_hints(cls)


def _check_types(config: Any, where: str = "") -> None:
    """Checks every setting of the (nested) config dataclass `config` with _check_value, as _build does a
    TOML table's, and keeps what it returns (an int given for a float becomes the float)."""
    for name, kind in _field_types(type(config)).items():
        value, key = getattr(config, name), f"{where}{name}"
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, kind):
                raise ValueError(f"{key} must be a {kind.__name__}, got {value!r} ({type(value).__name__})")
            _check_types(value, f"{key}.")
        else:
            setattr(config, name, _check_value(key, kind, value))


def _check_value(key: str, kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of strings, got {value!r} ({type(value).__name__})")
        return list(value)
    if origin is dict:
        if isinstance(value, dict):
            # By entry, so that the error names the entry --set gave (evaluation.splits.clean=2024) and says to
            # quote a number; a name that is not a string is left to the table's own check.
            for name, entry in value.items():
                if isinstance(name, str):
                    _check_value(f"{key}.{_toml_key(name)}", typing.get_args(kind)[1], entry)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"{key} must be a table of strings, got {value!r} ({type(value).__name__})")
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # TOML's integers have no size limit, a float stops near 1.8e308
            raise ValueError(f"{key} must be of type float, got an integer too large for one (about "
                             f"10^{math.floor(math.log10(abs(value)))})") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        # A folder named 2024 is a bare word to the user and a number to TOML.
        unquoted = (int, float, bool, datetime.date, datetime.time)  # datetime.datetime is a date
        quoting = (f"; TOML reads an unquoted number, date or boolean as one: quote it to give text "
                   f"(--set '{key}=\"...\"')") if kind is str and isinstance(value, unquoted) else ""
        # And a number Python reads (--set fr.optim.lr=.5) that TOML does not is a bare word, a string.
        spelling = ("; TOML writes numbers as 0.5, 5.0, 10, inf (lower case), without leading zeros"
                    if kind in (int, float) and isinstance(value, str) and _python_number_not_toml(value) else "")
        # Python's and everyday booleans (--set fuse.focal=True, yes) are bare words, strings, to TOML.
        boolean = ("; TOML writes a boolean as true or false (lower case)"
                   if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no")
                   else "")
        raise ValueError(f"{key} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})"
                         f"{quoting}{spelling}{boolean}")
    return value


def _python_number_not_toml(text: str) -> bool:
    """Whether float() reads `text` but TOML does not read it as a number (.5, 5., 010, Inf)."""
    try:
        float(text)
    except ValueError:
        return False
    try:
        return not isinstance(parse_toml(f"v = {text}").get("v"), (int, float))
    except tomllib.TOMLDecodeError:
        return True


def preset_names() -> list[str]:
    """Names of the presets shipped with the package, sorted."""
    return sorted(entry.name.removesuffix(".toml") for entry in PRESET_DIR.iterdir() if entry.name.endswith(".toml"))


def find_preset(preset: str) -> Traversable:
    """A path to a TOML file (a name ending in .toml, or any existing file) or a packaged preset by
    name (e.g. "quick"). Only a file counts as a path: a folder, a broken link or a pipe named like a
    preset (e.g. runs in ./default) must not hide the packaged one; named otherwise, it is an error that
    says what it is."""
    path = Path(preset)
    if path.suffix == ".toml" or path.is_file() or (
            os.path.lexists(path) and not path.is_dir() and preset not in preset_names()):
        if (problem := file_problem(path)) == "does not exist":
            raise ValueError(f"preset {preset!r}: no file {path} (packaged presets: {preset_names()})")
        if problem:
            raise ValueError(f"preset {preset!r}: {path} {problem}")
        return path
    if preset not in preset_names():
        raise ValueError(f"preset {preset!r} is neither a file nor a packaged preset (packaged presets: "
                         f"{preset_names()})")
    return PRESET_DIR / f"{preset}.toml"


def _missing_keys(cls: type, table: dict[str, Any], where: str) -> list[str]:
    """The dotted keys (prefixed with `where`) of config dataclass `cls` that `table`, a TOML table of it, lacks."""
    missing = []
    for name, kind in _field_types(cls).items():
        if name not in table:
            missing.append(f"{where}{name}")
        elif dataclasses.is_dataclass(kind) and isinstance(table[name], dict):
            missing += _missing_keys(kind, table[name], f"{where}{name}.")
    return missing


# An override's key: up to the first '=' outside a quoted part of it (a report name such as "a=b" may hold one).
_OVERRIDE_KEY = re.compile(r"""(?:[^="']|"(?:[^"\\]|\\.)*"|'[^']*')*""")


def _key_parts(key: str) -> list[str]:
    """The parts of dotted key `key`: with a quote in it, by TOML's rules for dotted keys
    (evaluation.splits."v1.2" names the report name v1.2, as --print-config writes it), else split at the
    dots (a name TOML would quote, such as café, can be given bare)."""
    if '"' not in key and "'" not in key:
        return [part.strip() for part in key.split(".")]  # TOML allows spaces around the dots
    try:
        table = parse_toml(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise ValueError(f"override key {key.strip()} is not a valid TOML dotted key (a quoted part is written "
                         f"\"v1.2\" or 'v1.2')") from None
    parts = []
    while isinstance(table, dict):  # "a"."b" = 0 reads as {"a": {"b": 0}}
        [(part, table)] = table.items()
        parts.append(part)
    return parts


def parse_override(text: str) -> tuple[list[str], Any]:
    """"a.b=value" -> (["a", "b"], value parsed as TOML, or the raw text when it is not TOML (a bare
    word); a value opening with a quote, `[` or `{` must be valid TOML, and only a TOML string may span
    lines (ValueError naming the key). A part of the key may be quoted as in TOML: a."b.c"=1 -> (["a", "b.c"], 1)."""
    end = _OVERRIDE_KEY.match(text).end()
    # A quote left open ("fr.steps=3) takes the first '=': _key_parts then names the key as not TOML.
    key, sep, raw = (text[:end], "=", text[end + 1:]) if text[end:end + 1] == "=" else text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override must look like key=value (e.g. fr.steps=50), got {text!r}")
    if "\n" in key or "\r" in key:  # '[fr]\n"steps"=5' read as TOML set fr.steps, a table header in the key
        raise ValueError(f"override key {key!r} spans more than one line; give each setting its own --set")
    if not raw.strip():  # `--set data.manifest=$MANIFEST` with the variable unset would train on other data
        raise ValueError(f"override {key.strip()}: no value after '='; an empty string is written {key.strip()}=\"\"")
    try:
        document = parse_toml(f"v = {raw}")
        value, more_lines = document.pop("v"), bool(document)
    except tomllib.TOMLDecodeError as error:
        # Meant as a TOML string, array or table: as raw text it would keep its quotes or brackets
        # (data.cache_dir="mycache, a missing closing quote, made a folder named "mycache).
        if raw.lstrip()[:1] in ('"', "'", "[", "{"):
            # The position tomllib gives counts the "v = " put before the value: it is left out.
            reason = re.sub(r" \(at line \d+, column \d+\)$", "", str(error))
            raise ValueError(f"override {key.strip()}: {raw} is not a valid TOML value ({reason}); strings "
                             "inside [ ] or { } need quotes (stages=[\"fr\", \"align\"], which a shell keeps "
                             "inside single quotes), and a backslash in double quotes starts an escape "
                             "('C:\\data' in single quotes does not)") from None
        # "key = word": TOML's spaces around it are not part of it, nor a final line break (a line read from a
        # file); a lone carriage return left is refused below as a line break, not hidden.
        value = re.sub(r"(\r?\n)?\Z", "", raw.strip(" \t")).strip(" \t")
        more_lines = "\n" in value or "\r" in value
    # A line break ends a TOML value: what followed it was read as other settings and dropped (--set
    # "$(cat overrides.txt)" set only the first), or kept in a bare word.
    if more_lines:
        raise ValueError(f"override {key.strip()}: {raw!r} spans more than one line; give each setting its own "
                         f"--set (a line break in a string is written \"a\\nb\")")
    return _key_parts(key), value


def set_key(values: dict[str, Any], keys: list[str], value: Any) -> Any:
    """Sets `value` at the dotted key `keys` (as parse_override splits it) of `values`, a TrainConfig as
    a nested dict (a preset, a run's config.toml). The key is checked against TrainConfig's fields, not
    against the keys `values` holds, so that a setting missing from a file can be set; past a setting
    that is a table of entries (evaluation.splits), the key names one of the entries `values` holds
    there. ValueError naming the key when it names no setting or entry. A table on the way that `values`
    lacks is made; one that is not a table there (e.g. `evaluation = 3`) is left as it is, for building
    the config to name. Returns the type of the setting set (a config dataclass for a table such as
    `fr`), None when nothing was set."""
    setting: Any = TrainConfig  # the type of what keys[:depth] names
    table: Any = values  # what `values` holds at keys[:depth] (None where it holds nothing)
    for depth, key in enumerate(keys):
        if dataclasses.is_dataclass(setting):
            known = [f.name for f in dataclasses.fields(setting)]
            setting = typing.get_type_hints(setting)[key] if key in known else None
        elif typing.get_origin(setting) is dict and isinstance(table, dict):
            # One entry of the table is changed, as `tgfr train --set` always allowed; a new entry
            # comes with the whole table (evaluation.splits={clean = "test", low = "test_low"}).
            known = list(table)
            setting = typing.get_args(setting)[1] if key in known else None
            if setting is None:
                # `--set evaluation.splits.blur=test_blur` is how one would add an entry, and only the README said
                # how else: the whole table, here with the entries it holds and the one given.
                entry = str(value) if depth == len(keys) - 1 else "..."
                whole = ", ".join(f"{_toml_key(name)} = {_toml_string(str(split))}"
                                  for name, split in {**table, key: entry}.items())
                suggestion = shlex.quote(f"{_dotted_key(keys[:depth])}={{{whole}}}")  # a value may hold a quote
                raise ValueError(f"unknown key {_dotted_key(keys[:depth + 1])}; known: "
                                 f"{', '.join(sorted(map(_toml_key, known)))}; to add an entry, give the whole "
                                 f"table: --set {suggestion}")
        elif typing.get_origin(setting) is dict:
            return None  # not a table in `values` (e.g. `splits = 3`): building the config names it
        else:
            raise ValueError(f"{_dotted_key(keys[:depth])} is not a table")
        if setting is None:
            raise ValueError(f"unknown key {_dotted_key(keys[:depth + 1])}; known: "
                             f"{', '.join(sorted(map(_toml_key, known)))}")
        table = table.get(key) if isinstance(table, dict) else None
    table = values
    for key in keys[:-1]:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            return None
    table[keys[-1]] = value
    return setting


@contextlib.contextmanager
def torch_threads(config: TrainConfig) -> typing.Iterator[None]:
    """torch's CPU threads set to config.threads (when > 0) for the block, the caller's setting after
    it: torch's CPU sums, and so a run's figures, then do not depend on the machine's cores, and a
    script or test session that trains or evaluates keeps its own thread count."""
    threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_config(preset: str = "default", overrides: Iterable[str] = ()) -> TrainConfig:
    """Reads a complete preset and applies `key=value` overrides (a list of strings)."""
    if isinstance(overrides, str):  # iterated, a string would be read as one override per character
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    # A dict would give its keys alone (its values dropped), a ("fr.steps", 5) pair an AttributeError naming nothing.
    items = list(overrides) if isinstance(overrides, Iterable) and not isinstance(overrides, (bytes, Mapping)) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
    path = find_preset(preset)
    try:
        values = parse_toml(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML is UTF-8 text
        raise ValueError(f"preset file {path} is not valid TOML: {error}") from None
    replaced_tables = []  # (override, keys, its inline table, the config dataclass it replaced)
    for override in items:
        keys, value = parse_override(override)
        try:
            setting = set_key(values, keys, value)
        except ValueError as error:
            raise ValueError(f"override {override!r}: {error}") from None
        if dataclasses.is_dataclass(setting) and isinstance(value, dict):
            replaced_tables.append((override, keys, value, setting))
    # An inline table replaces the whole table (a table setting such as evaluation.splits is meant to be
    # replaced): the keys it leaves out are the override's doing, not the preset's.
    for override, keys, inline, setting in replaced_tables:
        table, dotted = values, ".".join(keys)
        for key in keys:
            table = table.get(key) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            continue
        try:  # names a misspelled key (fr={stepz=5}) as unknown, not as the example of a key to set
            _build(setting, table, f"{dotted}.", complete=False)
        except ValueError as error:
            raise ValueError(f"override {override!r}: {error}") from None
        if missing := _missing_keys(setting, table, f"{dotted}."):
            example = next((f"{dotted}.{name}={_toml_value(entry)}" for name, entry in inline.items()
                            if not isinstance(entry, dict)), f"{missing[0]}=...")
            raise ValueError(f"override {override!r} replaces the whole [{dotted}] table, which then lacks "
                             f"{missing}; set single keys instead, e.g. {example}")
    # Checked once the overrides are in, so that --set can mend a file's value or fill a key it lacks. The
    # error names a user's preset file, where the value (unless an override's) came from.
    try:
        config = _build(TrainConfig, values, "", complete=True)
        config.check_training_recipe()
    except ValueError as error:
        if path == PRESET_DIR / f"{preset}.toml":  # a packaged preset: the value is an override's
            raise
        raise ValueError(f"preset file {path}{' with --set' if items else ''}: {error}") from None
    return config


# Keys added after runs were first written, each with the value that describes what a run written
# before it did: such a run's config.toml lacks the key, and must still evaluate and resume as trained.
# One exception the file cannot show: the commits 3db1e1f to 3874a79 (reverted by 1f0a382) generated
# version 2 before the version was recorded; a run trained there needs synthetic_version = 2 written
# under [data] by hand. model.fusion_out_dim: the linear fusion was 640 wide (TGFRConfig's default)
# before the setting existed. align.word_softmax: the word-region loss always normalized over words before.
# evaluation.controls says how to evaluate, not how the run trained: its default.
_ADDED_KEYS = {"data": {"synthetic_version": 1}, "model": {"fusion_out_dim": 640},
               "align": {"word_softmax": True, "text_encoder_lr_scale": 1.0}, "evaluation": {"controls": True}}


def with_added_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A run's config as a nested dict (its config.toml's, or a checkpoint's record of it) with the keys added
    since the run was written (_ADDED_KEYS) set to the values that it was trained with; `values` is left as it
    was."""
    values = dict(values)
    for table, added in _ADDED_KEYS.items():
        if isinstance(values.get(table), dict):
            values[table] = {**added, **values[table]}
    return values


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """TrainConfig from a run's config.toml as a nested dict: complete, but for the keys added since
    the run was written (with_added_keys)."""
    return _build(TrainConfig, with_added_keys(values), "", complete=True)


def read_run_config(out: str | Path) -> TrainConfig:
    """The config.toml of the run in folder `out` (written by `tgfr train`), as `tgfr train --resume` and a
    resume from Python read it; a ValueError names the file."""
    refuse_empty_path("out", out, "name the run folder")  # as a Path, "" is the current folder
    path = Path(out) / "config.toml"
    if problem := file_problem(path):
        hint = f" (no run to resume in {out})" if problem == "does not exist" else ""
        raise ValueError(f"{path} {problem}{hint}")
    try:
        return config_from_dict(parse_toml(path.read_text(encoding="utf-8")))
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror}") from None
    except ValueError as error:  # bad TOML, a bad encoding or bad values (all ValueErrors)
        raise ValueError(f"{path} is not a valid run config: {error}") from None


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and every control character escaped (TOML forbids them raw)."""
    return '"' + "".join(_TOML_ESCAPES.get(c, f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key (e.g. "low res", "v1.2")."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _dotted_key(keys: list[str]) -> str:
    """The dotted key of `keys` as an override writes it (evaluation.splits."v1.2")."""
    return ".".join(map(_toml_key, keys))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: Any, table: str = "") -> str:
    """Every field of a (nested) config dataclass as TOML, scalars before sub-tables."""
    lines, tables = [], []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            tables.append(to_toml(value, f"{table}{f.name}."))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    header = [f"[{table[:-1]}]"] if table else []
    return "\n".join(header + lines) + "\n" + "".join("\n" + t for t in tables)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
