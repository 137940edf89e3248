"""Each stage trains exactly its part of the model: gradients reach those parameters and no others;
the align stage runs with identity labels and weakly supervised (no labels anywhere)."""

import dataclasses

import pytest
import torch

from tgfr.losses import CoReFaceLoss
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.config import load_config
from tgfr.train.run import build_model, finish_stage
from tgfr.train.seeds import seed_everything
from tgfr.train.stage_align import AlignStage
from tgfr.train.stage_fr import FRStage
from tgfr.train.stage_fuse import FuseStage

CAPTIONS = ["She has green eyes and freckles.", "He wears round glasses and has a scar.",
            "A woman with curly red hair.", "The man has a short beard and brown eyes."]


@pytest.fixture
def parts(tiny_overrides):
    config = load_config("quick", tiny_overrides)
    seed_everything(0)
    model = build_model(config)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 0, 1, 2]), "captions": CAPTIONS,
             "all_captions": [[c, CAPTIONS[(i + 1) % 4]] for i, c in enumerate(CAPTIONS)]}
    return config, model, batch


def gradient_owners(stage):
    return {name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
            for name, p in stage.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def check_align(model, config, captions, batch, supervision):
    config.align.supervision = supervision
    align = AlignStage(model, config.align, 3, captions, torch.device("cpu"))
    align.train()
    loss, components = align(batch)
    assert torch.isfinite(loss)
    loss.backward()
    owners = gradient_owners(align)
    assert {"image_head", "text_head"} <= owners and not owners & {"backbone", "fusion", "text_encoder"}
    assert ("confidence" in components) == (supervision == "weak")
    model.zero_grad(set_to_none=True)


def test_weakly_supervised_align_trains_the_heads(parts):
    config, model, batch = parts
    model.backbone.freeze()
    check_align(model, config, CaptionFeatures(model.text_encoder, torch.device("cpu")), batch, "weak")


def test_stages_train_their_parts(parts):
    config, model, batch = parts
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    fr = FRStage(model, config.fr, 3, torch.device("cpu"))
    fr.train()
    loss, components = fr(batch)
    loss.backward()
    assert gradient_owners(fr) == {"backbone", "losses"}
    assert {"arcface1", "arcface2", "coreface"} <= set(components)
    finish_stage(model, "fr")
    model.zero_grad(set_to_none=True)
    assert all(not p.requires_grad for p in model.backbone.parameters())

    check_align(model, config, captions, batch, "identity")

    model.zero_grad(set_to_none=True)
    fuse = FuseStage(model, config.fuse, 3, captions, torch.device("cpu"))
    fuse.train()
    fuse(batch)[0].backward()
    assert gradient_owners(fuse) == {"fusion", "losses"}
    # Only the trained part is in training mode (BatchNorm statistics elsewhere stay fixed).
    assert model.fusion.training and not model.image_head.training and not model.backbone.training


def test_a_trainable_text_encoder_is_optimized_by_the_align_stage_only(tiny_overrides):
    """With freeze_text_encoder=false the encoder's parameters (all but BERT's pooler, which no feature uses)
    are optimized in align and nowhere else: fr and fuse, built before and after it, list none of them."""
    config = load_config("quick", tiny_overrides + ["model.freeze_text_encoder=false"])
    model = build_model(config)
    cpu = torch.device("cpu")
    captions = CaptionFeatures(model.text_encoder, cpu)
    pooler = {id(p) for p in model.text_encoder.model.pooler.parameters()}
    encoder = {id(p) for p in model.text_encoder.parameters()} - pooler
    assert pooler and encoder

    def optimized_encoder_parameters(stage):
        return {id(p) for p in stage.parameters_to_optimize()} & (encoder | pooler)

    assert optimized_encoder_parameters(FRStage(model, config.fr, 3, cpu)) == set()
    assert optimized_encoder_parameters(AlignStage(model, config.align, 3, captions, cpu)) == encoder
    assert optimized_encoder_parameters(FuseStage(model, config.fuse, 3, captions, cpu)) == set()


@pytest.mark.parametrize("scale", [0.01, 0.25, 1.0])
def test_a_trainable_text_encoder_trains_at_its_own_fraction_of_the_align_rate(tiny_overrides, scale):
    """At the heads' rate (align.optim.lr) the pretrained encoder's sentence features collapsed within 100 steps
    (a review: mean pairwise cosine 0.52 -> 0.95): it trains at align.text_encoder_lr_scale times that rate, on the
    same schedule; the heads' group comes first (the rate metrics.jsonl logs). Scale 1, what a run from before the
    setting reads, keeps one group: the optimizer state its checkpoints hold."""
    from tgfr.train.loop import lr_factor, make_optimizer

    config = load_config("quick", tiny_overrides + ["model.freeze_text_encoder=false",
                                                    f"align.text_encoder_lr_scale={scale}"])
    model = build_model(config)
    cpu = torch.device("cpu")
    align = AlignStage(model, config.align, 3, CaptionFeatures(model.text_encoder, cpu), cpu)
    encoder = {id(p) for p in model.text_encoder.parameters() if p.requires_grad}
    optimizer = make_optimizer(align.parameter_groups(), config.align.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.align.steps, config.align.optim))
    groups = optimizer.param_groups
    lr = config.align.optim.lr
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(
        id(p) for p in align.parameters_to_optimize())
    if scale == 1.0:
        assert len(groups) == 1 and groups[0]["lr"] == lr * lr_factor(0, config.align.steps, config.align.optim)
        return
    heads, text_encoder = groups
    assert {id(p) for p in text_encoder["params"]} == encoder and not {id(p) for p in heads["params"]} & encoder
    for step in range(3):
        factor = lr_factor(step, config.align.steps, config.align.optim)
        assert heads["lr"] == pytest.approx(lr * factor) and text_encoder["lr"] == pytest.approx(lr * scale * factor)
        optimizer.step()
        scheduler.step()
    frozen = load_config("quick", tiny_overrides + [f"align.text_encoder_lr_scale={scale}"])
    frozen_model = build_model(frozen)
    assert len(AlignStage(frozen_model, frozen.align, 3, CaptionFeatures(frozen_model.text_encoder, cpu),
                          cpu).parameter_groups()) == 1


def test_caption_features_serve_the_encoders_word_features_only(parts):
    """The caption cache keeps each caption's word features (float16), the only text encoder output the
    TGFR model uses; it no longer computes or stores the encoder's sentence feature."""
    _, model, _ = parts
    assert model.text_encoder.frozen
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    served = captions(CAPTIONS[:2])
    assert served._fields == ("words", "lengths", "mask")
    with torch.no_grad():
        expected = model.text_encoder(**model.tokenize(CAPTIONS[:2]))
    assert torch.equal(served.lengths, expected.lengths) and torch.equal(served.mask, expected.mask)
    torch.testing.assert_close(served.words, expected.words.half().float())
    assert all(isinstance(words, torch.Tensor) and words.dtype == torch.float16 and words.ndim == 2
               for words in captions.cache.values())


def test_prefill_caches_a_whole_vocabulary_in_sorted_chunks_and_keeps_served_captions(parts):
    """A chunk partly cached by an earlier batch is still encoded: its other captions get the features of
    the sorted chunk, while the caption served before keeps the features it was served with."""
    _, model, _ = parts
    vocabulary = sorted(CAPTIONS + ["A man with a grey moustache.", "She wears a red hat.", "He is bald."])
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"), chunk=3)
    served_first = vocabulary[1]  # in the first sorted chunk
    before = captions([served_first]).words
    # With several threads a frozen encoder's output for a caption changes in its last bits with the
    # batch around it; changing its weights stands in for that, so that re-encoding the served caption shows.
    with torch.no_grad():
        for parameter in model.text_encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    captions.prefill(vocabulary[::-1] + vocabulary[:2])  # any order, repeats: the same chunks
    assert set(captions.cache) == set(vocabulary)
    assert torch.equal(captions([served_first]).words, before)
    for start in range(0, len(vocabulary), 3):
        chunk = vocabulary[start:start + 3]
        with torch.no_grad():
            expected = model.text_encoder(**model.tokenize(chunk))
        for i, caption in enumerate(chunk):
            encoded_now = expected.words[i, :expected.lengths[i]].half()
            assert torch.equal(captions.cache[caption], encoded_now) == (caption != served_first), caption


def test_a_trainable_text_encoder_s_caption_features_carry_gradients(tiny_overrides):
    """With freeze_text_encoder=false every batch runs the encoder with autograd and nothing is cached."""
    config = load_config("quick", tiny_overrides + ["model.freeze_text_encoder=false"])
    model = build_model(config)
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    captions.prefill(CAPTIONS)
    served = captions(CAPTIONS[:2])
    assert served.words.requires_grad
    served.words.sum().backward()
    pooler = {id(p) for p in model.text_encoder.model.pooler.parameters()}  # no word feature uses it
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for p in model.text_encoder.parameters() if id(p) not in pooler)
    assert captions.cache == {}


def test_a_trainable_text_encoder_s_captions_are_cached_where_it_does_not_train(tiny_overrides):
    """The fuse stage (and evaluation) fix a trainable encoder: each caption is then encoded once, with the
    encoder's current weights; once it trains again, the features cached before are dropped."""
    config = load_config("quick", tiny_overrides + ["model.freeze_text_encoder=false"])
    model = build_model(config)
    cpu = torch.device("cpu")
    captions = CaptionFeatures(model.text_encoder, cpu)
    calls = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, output: calls.append(1), with_kwargs=True)
    AlignStage(model, config.align, 3, captions, cpu)
    captions(CAPTIONS), captions(CAPTIONS)
    assert len(calls) == 2 and captions.cache == {}
    FuseStage(model, config.fuse, 3, captions, cpu)
    captions.prefill(CAPTIONS)
    served = captions(CAPTIONS[:2]), captions(CAPTIONS[2:])
    assert len(calls) == 3 and set(captions.cache) == set(CAPTIONS)
    with torch.no_grad():  # in eval mode, as the cache encodes (a trainable encoder is built training)
        expected = model.text_encoder.eval()(**model.tokenize(sorted(CAPTIONS)))
    for caption, words in zip(CAPTIONS, [w for part in served for w in part.words]):
        row = sorted(CAPTIONS).index(caption)
        length = int(expected.lengths[row])
        torch.testing.assert_close(words[:length], expected.words[row, :length].half().float())
    AlignStage(model, config.align, 3, captions, cpu)
    assert captions(CAPTIONS[:1]).words.requires_grad and captions.cache == {}


@pytest.mark.parametrize("supervision", ["identity", "weak"])
def test_align_loss_is_its_documented_sum_of_the_losses_on_the_right_features(parts, supervision):
    """stage_align's docstring: wrcl_weight * WRCL(words, regions) + cicl_weight * CICL(sentence, image)
    + intra_weight * intra(sentence of caption a, of caption b) + identity_weight * identity, with identity
    labels masking pairs (WRCL, CICL: exclude; intra: positive) or, weak, no label anywhere. A review's
    mutations (the second sentence replaced by the first, labels dropped from intra, no masking, the image
    head's ArcFace fed the sentence) passed every test. In eval mode: no dropout, no association update."""
    from tgfr.losses import CaptionImageContrastiveLoss, IntraModalContrastiveLoss, WordRegionContrastiveLoss

    config, model, batch = parts
    config.align.supervision = supervision
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    align = AlignStage(model, config.align, 3, captions, torch.device("cpu")).eval()
    with torch.no_grad():
        total, components = align(batch)
        first, second = (captions([pair[k] for pair in batch["all_captions"]]) for k in (0, 1))
        embedding, region_map = model.backbone(batch["images"])
        image, regions = model.image_head(embedding, region_map)
        words, sentence = model.text_head(first.words, first.lengths)
        _, second_sentence = model.text_head(second.words, second.lengths)
        a = config.align
        labels = batch["labels"] if supervision == "identity" else None
        masking = "exclude" if labels is not None else "none"
        expected = {
            "wrcl": WordRegionContrastiveLoss(a.gamma1, a.gamma2, a.gamma3, a.word_softmax, same_identity=masking)(
                words, first.lengths, regions, labels),
            "cicl": CaptionImageContrastiveLoss(a.cicl_scale, same_identity=masking)(sentence, image, labels),
            "intra": IntraModalContrastiveLoss(a.intra_scale, same_identity="positive" if labels is not None
                                               else "none")(sentence, second_sentence, labels),
        }
        if labels is not None:
            expected["identity"] = (align.losses["sentence_identity"](sentence, labels)
                                    + align.losses["image_identity"](image, labels))
        else:
            expected["identity"] = align.losses["association"](image, sentence)[0]
    for name, value in expected.items():
        torch.testing.assert_close(components[name], value, rtol=1e-5, atol=1e-5, msg=name)
    weighted = (a.wrcl_weight * expected["wrcl"] + a.cicl_weight * expected["cicl"]
                + a.intra_weight * expected["intra"] + a.identity_weight * expected["identity"])
    torch.testing.assert_close(total, weighted, rtol=1e-5, atol=1e-5)


def test_align_without_the_intra_loss_reads_one_caption_per_image(parts):
    """align.intra_weight = 0: the stage's batches hold one caption per image (no all_captions), and its loss is
    the same as the full stage's on those captions less the intra term."""
    config, model, batch = parts
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    full = AlignStage(model, config.align, 3, captions, torch.device("cpu")).eval()
    without_intra = AlignStage(model, dataclasses.replace(config.align, intra_weight=0.0), 3, captions,
                               torch.device("cpu")).eval()
    without_intra.losses.load_state_dict(full.losses.state_dict())
    assert without_intra.captions_per_sample == 1 and full.captions_per_sample == 2
    with torch.no_grad():
        total, components = without_intra({key: value for key, value in batch.items() if key != "all_captions"})
        expected_total, expected = full(batch)
    assert "intra" not in components
    for name in ("wrcl", "cicl", "identity"):
        torch.testing.assert_close(components[name], expected[name], msg=name)
    torch.testing.assert_close(total, expected_total - full.config.intra_weight * expected["intra"])


@pytest.mark.parametrize("supervision, components", [("identity", {"wrcl", "cicl", "intra", "identity"}),
                                                    ("weak", {"wrcl", "cicl", "intra", "identity", "confidence"})])
def test_an_align_record_in_metrics_jsonl_holds_the_loss_its_components_the_rate_and_samples_per_s(
        tmp_path, parts, supervision, components):
    """README's record: the loss components, the learning rate, samples/s (and the loss, gradient norm, step, time).
    align's also held `total`, a copy of `loss`, which a script plotting every other number as a component counted
    twice."""
    from tgfr.train.loop import LoopSettings, run_stage
    from tgfr.train.training_log import TrainingLog, read_log

    config, model, batch = parts
    finish_stage(model, "fr")  # align takes the backbone frozen
    config.align.supervision = supervision
    cpu = torch.device("cpu")
    align = AlignStage(model, config.align, 3, CaptionFeatures(model.text_encoder, cpu), cpu)

    class SameBatch:
        def from_step(self, step: int):
            while True:
                yield batch

    run_stage(align, SameBatch(), dataclasses.replace(config.align.optim, warmup_steps=0), 1,
              LoopSettings(cpu, log_every=1), TrainingLog(tmp_path / "metrics.jsonl"), lambda *state: None)
    [record] = read_log(tmp_path / "metrics.jsonl")
    assert set(record) == {"stage", "step", "time", "loss", "grad_norm", "lr", "samples_per_s", *components}
    a = config.align
    assert record["loss"] == pytest.approx(a.wrcl_weight * record["wrcl"] + a.cicl_weight * record["cicl"]
                                           + a.intra_weight * record["intra"] + a.identity_weight * record["identity"],
                                           rel=1e-5)


@pytest.mark.parametrize("distributed", [True, False])
def test_every_loss_gathers_the_ranks_exactly_when_the_stage_runs_distributed(parts, distributed):
    """Under DDP each loss must take the ranks' batches together (SPEC: the single-process loss on the whole
    batch); a loss left local contrasts each rank's rows with its own share only, which no run reveals."""
    config, model, _ = parts
    cpu, captions = torch.device("cpu"), CaptionFeatures(model.text_encoder, torch.device("cpu"))

    def gathering(stage) -> list[bool]:
        return [module.gather_ranks for module in stage.losses.modules() if hasattr(module, "gather_ranks")]

    assert gathering(FRStage(model, config.fr, 3, cpu, distributed=distributed)) == [distributed] * 2
    finish_stage(model, "fr")  # align and fuse take the backbone frozen
    # Identity: word-region, caption-image, intra and two identity heads; weak: the association for the heads.
    for supervision, losses in (("identity", 5), ("weak", 4)):
        config.align.supervision = supervision
        assert gathering(AlignStage(model, config.align, 3, captions, cpu, distributed=distributed)) == \
            [distributed] * losses, supervision
    for focal in (True, False):
        config.fuse.focal = focal
        assert gathering(FuseStage(model, config.fuse, 3, captions, cpu, distributed=distributed)) == [distributed]


def test_training_caches_the_whole_split_vocabulary_before_a_stage_reads_captions(tmp_path, tiny_overrides,
                                                                                   monkeypatch):
    """With more threads or on a GPU a caption's features depend on the captions encoded beside it, so a run
    resumed midway must group them as the uninterrupted run did: every stage that reads captions first caches
    its split's whole vocabulary (prefill, in sorted chunks), and its batches then find every caption cached.
    On this CPU the features do not depend on the grouping, so the resume tests cannot see a missing prefill."""
    from tgfr.data.manifest import read_manifest, select_split
    from tgfr.train.batches import resolve_manifest
    from tgfr.train.run import train

    config = load_config("quick", tiny_overrides)
    manifest = resolve_manifest(config.data)
    vocabulary = {caption for record in select_split(read_manifest(manifest), config.data.train_split)
                  for caption in record.captions}
    prefilled, stored_outside_prefill = [], []
    prefill, store = CaptionFeatures.prefill, CaptionFeatures._store

    def recording_prefill(self, captions):
        captions = list(captions)
        prefilled.append(set(captions))
        self.in_prefill = True
        try:
            prefill(self, captions)
        finally:
            self.in_prefill = False

    def recording_store(self, captions):
        if captions and not getattr(self, "in_prefill", False):
            stored_outside_prefill.append(captions)
        store(self, captions)

    monkeypatch.setattr(CaptionFeatures, "prefill", recording_prefill)
    monkeypatch.setattr(CaptionFeatures, "_store", recording_store)
    train(config, tmp_path, stop_after=config.fr.steps + 2 + config.align.steps)  # 2 steps into fuse
    assert prefilled == [vocabulary, vocabulary]  # align, then fuse
    assert stored_outside_prefill == []


# Every stage setting a value of its own (none equal to another, none the quick preset's), so that a stage reading
# one setting for another (align.intra_scale for align.cicl_scale) or weighing a term by another's weight differs.
DISTINCT_SETTINGS = [
    "fr.arcface_scale=20.0", "fr.arcface_margin=0.25", "fr.ce_weight=0.7", "fr.coreface_weight=0.11",
    "fr.coreface_scale=48.0", "align.wrcl_weight=0.3", "align.cicl_weight=1.7", "align.intra_weight=2.9",
    "align.identity_weight=0.6", "align.cicl_scale=7.0", "align.intra_scale=13.0", "align.identity_scale=21.0",
    "align.identity_margin=0.2", "align.gamma1=3.0", "align.gamma2=6.0", "align.gamma3=9.0", "align.word_softmax=false",
    "fuse.arcface_scale=24.0", "fuse.arcface_margin=0.35", "fuse.focal=true",
]


def test_each_stage_builds_and_weighs_its_losses_with_its_own_settings(tiny_overrides):
    config = load_config("quick", tiny_overrides + DISTINCT_SETTINGS)
    seed_everything(0)
    model = build_model(config)
    cpu = torch.device("cpu")
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 0, 1, 2]), "captions": CAPTIONS,
             "all_captions": [[c, CAPTIONS[(i + 1) % 4]] for i, c in enumerate(CAPTIONS)]}

    fr = FRStage(model, config.fr, 3, cpu).train()
    arcface = fr.losses["arcface"]
    assert (arcface.scale, arcface.margin, arcface.focal, fr.losses["coreface"].scale) == (20.0, 0.25, False, 48.0)
    generator_state = torch.get_rng_state()
    total, parts = fr(batch)
    assert not torch.equal(parts["arcface1"], parts["arcface2"])  # two dropout views, each scored
    torch.testing.assert_close(total, 0.7 * (parts["arcface1"] + parts["arcface2"]) + 0.11 * parts["coreface"])
    # CoReFace compares the two views (one view against itself lost the embedding augmentation) with the labels
    # (without them, images of one identity were pushed apart): the same dropout draws give the same term.
    torch.set_rng_state(generator_state)
    view1, view2, _ = model.backbone.forward_two_views(batch["images"])
    torch.testing.assert_close(parts["coreface"], CoReFaceLoss(48.0)(view1.float(), view2.float(), batch["labels"]))
    finish_stage(model, "fr")

    captions = CaptionFeatures(model.text_encoder, cpu)
    align = AlignStage(model, config.align, 3, captions, cpu).train()
    terms = align.losses["multi_granularity"]
    word_region = terms.word_region
    assert (word_region.gamma1, word_region.gamma2, word_region.gamma3) == (3.0, 6.0, 9.0)
    assert word_region.word_softmax is False  # the loss's own default is true
    assert (terms.caption_image.scale, align.losses["intra"].scale) == (7.0, 13.0)
    for head in (align.losses["sentence_identity"], align.losses["image_identity"]):
        assert (head.scale, head.margin, head.focal) == (21.0, 0.2, False)
    total, parts = align(batch)
    torch.testing.assert_close(total, 0.3 * parts["wrcl"] + 1.7 * parts["cicl"] + 2.9 * parts["intra"]
                               + 0.6 * parts["identity"])

    head = FuseStage(model, config.fuse, 3, captions, cpu).losses["arcface"]
    assert (head.scale, head.margin, head.focal) == (24.0, 0.35, True)


@pytest.mark.parametrize("supervision", ["identity", "weak"])
def test_align_skips_an_identity_term_of_weight_0(parts, supervision, monkeypatch):
    """align.identity_weight = 0 (an ablation), as MultiGranularityLoss's terms of weight 0: the two ArcFace heads
    (weak: the association loss, whose memory moved) ran, 0 * a non-finite term made the total NaN, and the log showed
    the unweighted term. It is logged as 0, the loss is the full stage's less the identity term, and the heads'
    parameters get zero gradients, not none (DistributedDataParallel refuses a parameter that gets none)."""
    from tgfr.losses import ArcFaceHead, DualGranularityAssociationLoss

    config, model, batch = parts
    model.backbone.freeze()
    config.align.supervision = supervision
    captions, cpu = CaptionFeatures(model.text_encoder, torch.device("cpu")), torch.device("cpu")
    full = AlignStage(model, config.align, 3, captions, cpu).train()
    without_identity = AlignStage(model, dataclasses.replace(config.align, identity_weight=0.0), 3, captions,
                                  cpu).train()
    without_identity.losses.load_state_dict(full.losses.state_dict())
    with torch.no_grad():
        expected_total, expected = full(batch)

    def refuse(*args, **kwargs):
        raise AssertionError("the identity term of weight 0 was computed")

    monkeypatch.setattr(ArcFaceHead, "forward", refuse)
    monkeypatch.setattr(DualGranularityAssociationLoss, "forward", refuse)
    memory = {name: buffer.clone() for name, buffer in without_identity.losses.named_buffers()}
    total, components = without_identity(batch)
    assert set(components) == {"wrcl", "cicl", "intra", "identity"}  # no association confidence either
    assert components["identity"].item() == 0.0
    for name in ("wrcl", "cicl", "intra"):
        torch.testing.assert_close(components[name], expected[name], msg=name)
    torch.testing.assert_close(total, expected_total - config.align.identity_weight * expected["identity"])
    total.backward()
    owners = {name.split(".")[0] for name, _ in without_identity.losses.named_parameters()}
    assert owners == ({"sentence_identity", "image_identity"} if supervision == "identity" else set())
    for name, parameter in without_identity.losses.named_parameters():
        assert parameter.grad is not None and torch.equal(parameter.grad, torch.zeros_like(parameter)), name
    for name, buffer in without_identity.losses.named_buffers():
        assert torch.equal(buffer, memory[name]), name
    assert ("association.prototypes" in memory) == (supervision == "weak")
