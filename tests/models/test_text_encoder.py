import json
import pickle
import re
import shutil
import socket
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (AutoTokenizer, BertConfig, BertModel, CLIPModel, GPT2Config, GPT2Model, GPT2Tokenizer,
                          PreTrainedTokenizerFast)
from transformers.utils import logging as transformers_logging

from tgfr.models import TextEncoder, packaged_minilm_path
from tgfr.models.text_encoder import TextModelFilesError
from tgfr.torch_files import REFUSED_PICKLE

CAPTIONS = ["The woman has blond hair and wears heavy makeup.", "He is a young man with a beard."]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_packaged_minilm_is_offline_deterministic_and_matches_sentence_transformers(no_network):
    first = TextEncoder().eval()
    second = TextEncoder().eval()
    batch = first.tokenize(CAPTIONS)
    with torch.no_grad():
        a, b = first(**batch), second(**batch)
    assert a.words.shape == (2, 22, 384) and a.sentence.shape == (2, 384)
    for x, y in zip(a, b):
        assert torch.equal(x, y)

    # sentence-transformers' own pipeline (mean pooling, then its Normalize module) as reference
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    expected = reference.encode(CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(F.normalize(a.sentence, dim=-1), expected, atol=1e-5, rtol=1e-4)


def test_word_features_drop_special_tokens_and_padding(tiny_bert_dir):
    encoder = TextEncoder(tiny_bert_dir, max_length=8).eval()
    captions = ["a young man with a beard", "blond woman", "a man with black hair and glasses smiling"]
    batch = encoder.tokenize(captions)
    assert batch["input_ids"].shape == (3, 8)
    with torch.no_grad():
        features = encoder(**batch)
        hidden = encoder.model(**batch).last_hidden_state

    word_counts = [min(len(encoder.tokenizer.tokenize(caption)), 8 - 2) for caption in captions]
    assert features.lengths.tolist() == word_counts
    assert features.words.shape == (3, 6, 32)
    for i, count in enumerate(word_counts):
        torch.testing.assert_close(features.words[i, :count], hidden[i, 1 : 1 + count])
        assert torch.all(features.words[i, count:] == 0)
        assert features.mask[i].tolist() == [t < count for t in range(6)]
        attended = batch["attention_mask"][i].bool()
        torch.testing.assert_close(features.sentence[i], hidden[i, attended].mean(0))


@pytest.mark.parametrize("pooling", ["cls", "pooled"])
def test_bert_pooling_modes(tiny_bert_dir, pooling):
    encoder = TextEncoder(tiny_bert_dir, max_length=10, sentence_pooling=pooling).eval()
    batch = encoder.tokenize(["old man", "a woman with glasses"])
    with torch.no_grad():
        output = encoder.model(**batch)
        sentence = encoder(**batch).sentence
    expected = output.last_hidden_state[:, 0] if pooling == "cls" else output.pooler_output
    torch.testing.assert_close(sentence, expected)


def test_clip_text_model_by_path(tiny_clip_text_dir):
    encoder = TextEncoder(tiny_clip_text_dir, max_length=12, sentence_pooling="pooled").eval()
    assert encoder.hidden_size == 32
    batch = encoder.tokenize(["a man", "hair"])
    with torch.no_grad():
        features = encoder(**batch)
        output = encoder.model(**batch)
    counts = [len(encoder.tokenizer.tokenize(c)) for c in ["a man", "hair"]]
    assert features.lengths.tolist() == counts
    assert features.words.shape == (2, 10, 32)
    torch.testing.assert_close(features.words[1, : counts[1]], output.last_hidden_state[1, 1 : 1 + counts[1]])
    # CLIP's pooled output is the state at the end-of-text token, right after the last word
    torch.testing.assert_close(features.sentence, output.last_hidden_state[[0, 1], [c + 1 for c in counts]])


def test_full_clip_checkpoint_loads_its_text_tower(tiny_full_clip_dir):
    clip = CLIPModel.from_pretrained(tiny_full_clip_dir, local_files_only=True).eval()
    encoder = TextEncoder(tiny_full_clip_dir, max_length=12).eval()
    batch = encoder.tokenize(["a beard"])
    with torch.no_grad():
        expected = clip.text_model(**batch).last_hidden_state
        words = encoder(**batch).words
    count = len(encoder.tokenizer.tokenize("a beard"))
    torch.testing.assert_close(words[0, :count], expected[0, 1 : 1 + count])


def test_gradients_reach_the_packaged_encoder():
    encoder = TextEncoder(max_length=12)
    features = encoder(**encoder.tokenize(CAPTIONS))
    (features.words.square().sum() + features.sentence.sum()).backward()
    embeddings = encoder.model.embeddings.word_embeddings.weight.grad
    assert embeddings is not None and embeddings.abs().sum() > 0
    # Every trainable parameter gets a gradient (DDP without find_unused_parameters needs that);
    # under mean pooling the pooler is not trainable.
    assert [name for name, p in encoder.model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert [name for name, p in encoder.model.named_parameters() if not p.requires_grad] == [
        name for name, _ in encoder.model.pooler.named_parameters(prefix="pooler")]


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooled"])
def test_exactly_the_parameters_the_features_use_are_trainable(tiny_bert_dir, pooling):
    """A parameter requires a gradient iff the features depend on it, also after requires_grad_(True)
    (what a training stage calls on a trainable encoder); the state dict keeps every weight."""
    encoder = TextEncoder(tiny_bert_dir, max_length=8, sentence_pooling=pooling).requires_grad_(True)
    features = encoder(**encoder.tokenize(["a man with a beard", "blond woman"]))
    (features.words.sum() + features.sentence.sum()).backward()
    # Reached by the backward (a gradient, if only zeros), as DDP counts a parameter used.
    used = {name for name, p in encoder.named_parameters() if p.grad is not None}
    assert {name for name, p in encoder.named_parameters() if p.requires_grad} == used
    assert any("pooler" in name for name in used) == (pooling == "pooled")
    assert any("pooler" in name for name in encoder.state_dict())


def test_max_length_beyond_the_position_embeddings_is_refused(tiny_bert_dir, tiny_clip_text_dir):
    for directory in (tiny_bert_dir, tiny_clip_text_dir):
        limit = TextEncoder(directory).model.config.max_position_embeddings
        TextEncoder(directory, max_length=limit)
        with pytest.raises(ValueError, match=f"max_length must be at most {limit}, .* got {limit + 1}"):
            TextEncoder(directory, max_length=limit + 1)


def test_max_length_below_two_special_tokens_and_a_word_is_refused(tiny_bert_dir):
    encoder = TextEncoder(tiny_bert_dir, max_length=3)  # [CLS], one word piece, [SEP]
    features = encoder(**encoder.tokenize(["a man with a beard"]))
    assert features.lengths.tolist() == [1] and features.words.shape[1] == 1
    for max_length in (2, 1, 0):
        with pytest.raises(ValueError, match=f"^max_length must be an integer >= 3, got {max_length}$"):
            TextEncoder(tiny_bert_dir, max_length=max_length)
    # A float passed the bound and failed at the first tokenize ("'float' object cannot be interpreted as an
    # integer"); a bool was a width of 1.
    for max_length in (12.0, True, "12"):
        with pytest.raises(TypeError, match="^" + re.escape(f"max_length must be an integer, got "
                                                            f"{type(max_length).__name__} {max_length!r}") + "$"):
            TextEncoder(tiny_bert_dir, max_length=max_length)
    assert TextEncoder(tiny_bert_dir, max_length=np.int64(5)).tokenize(["a man"])["input_ids"].shape == (1, 5)


def test_max_length_counts_the_positions_roberta_reaches(tiny_roberta_dir):
    """RoBERTa numbers positions from padding_idx + 1, so of its 20 position embeddings 18 tokens
    fit: the model itself runs at width 18 and fails at 19; the encoder takes max_length 18 and
    refuses 19 by name, before any forward."""
    model = TextEncoder(tiny_roberta_dir, max_length=18).model
    with torch.no_grad():
        model(input_ids=torch.full((1, 18), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, 19), 5))
    encoder = TextEncoder(tiny_roberta_dir, max_length=18)
    features = encoder(**encoder.tokenize(["a man with a beard"]))  # 18 bytes, cut to 16 words
    assert features.lengths.tolist() == [16]
    for max_length in (19, 20):
        with pytest.raises(ValueError, match=f"^max_length must be at most 18, .* got {max_length}$"):
            TextEncoder(tiny_roberta_dir, max_length=max_length)


@pytest.mark.parametrize("text_dir, positions", [("tiny_bert_dir", 64), ("tiny_roberta_dir", 18)])
def test_inputs_the_model_cannot_take_are_refused_by_name(text_dir, positions, request):
    encoder = TextEncoder(request.getfixturevalue(text_dir), max_length=6)
    ids, mask = torch.full((1, positions), 5), torch.ones(1, positions, dtype=torch.int64)
    assert encoder(ids, mask).words.shape[1] == positions - 2
    wide = re.escape(f"input_ids must be at most {positions} tokens wide, the number of positions of the text "
                     f"encoder in {encoder.name_or_path}, got shape (1, {positions + 1})")
    with pytest.raises(ValueError, match=wide):
        encoder(torch.full((1, positions + 1), 5), torch.ones(1, positions + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape("input_ids must not be empty along dimension 0, got shape (0, 6)")):
        encoder(torch.zeros(0, 6, dtype=torch.int64), torch.zeros(0, 6, dtype=torch.int64))


@pytest.mark.parametrize("outside", [-1, 0])  # 0: replaced by the vocabulary size
def test_input_ids_outside_the_vocabulary_are_refused_by_name(tiny_bert_dir, outside):
    encoder = TextEncoder(tiny_bert_dir, max_length=6)
    vocab_size = encoder.model.config.vocab_size
    batch = encoder.tokenize(["a man", "old woman"])
    ids = batch["input_ids"].clone()
    ids[1, 1] = outside or vocab_size
    message = re.escape(f"input_ids must lie in [0, {vocab_size}), the vocabulary of the text encoder in "
                        f"{encoder.name_or_path}, got values from {int(ids.min())} to {int(ids.max())}")
    with pytest.raises(ValueError, match=message):
        encoder(ids, batch["attention_mask"])


def test_attention_mask_values_other_than_0_and_1_are_refused_and_bools_accepted(tiny_bert_dir):
    encoder = TextEncoder(tiny_bert_dir, max_length=6).eval()  # dropout off: the two forwards compare exactly
    batch = encoder.tokenize(["a man", "old woman"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = encoder(ids, mask)
    from_bools = encoder(ids, mask.bool())
    assert torch.equal(from_bools.lengths, expected.lengths) and torch.equal(from_bools.words, expected.words)
    for outside in (2, 0.5):  # 2s would count each word twice; 0.5s would be called a mask of no tokens
        with pytest.raises(ValueError, match=re.escape(f"attention_mask must hold only 0s and 1s (or bools), "
                                                       f"got {outside}")):
            encoder(ids, mask * outside)


def test_frozen_encoder(tiny_bert_dir):
    encoder = TextEncoder(tiny_bert_dir, max_length=8, frozen=True)
    encoder.train()
    assert not encoder.training and not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    batch = encoder.tokenize(["a man with a beard"])
    first, second = encoder(**batch), encoder(**batch)  # dropout stays off
    assert not first.words.requires_grad
    assert torch.equal(first.words, second.words)
    # A wrapper's requires_grad_(True) runs nn.Module's, which sets every parameter, past the encoder's own: the
    # forward turns them off again and builds no graph through the model.
    torch.nn.Module.requires_grad_(encoder, True)
    assert not encoder(**batch).words.requires_grad
    assert not any(p.requires_grad for p in encoder.parameters())


def test_bad_inputs(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="name_or_path"):
        TextEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="sentence_pooling"):
        TextEncoder(tiny_bert_dir, sentence_pooling="max")
    encoder = TextEncoder(tiny_bert_dir, max_length=6)
    with pytest.raises(ValueError, match=r"captions\[1\] = '' has no word"):
        encoder.tokenize(["a man", ""])
    batch = encoder.tokenize(["a man", "old woman"])
    mask = batch["attention_mask"].clone()
    mask[1] = 0
    mask[1, :2] = 1  # [CLS] [SEP] alone: a mask made by hand is checked too
    with pytest.raises(ValueError, match="attention_mask row 1"):
        encoder(batch["input_ids"], mask)
    with pytest.raises(ValueError, match="right-padded"):
        encoder(batch["input_ids"], batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        encoder(batch["input_ids"], batch["attention_mask"][:, :4])
    with pytest.raises(TypeError, match="input_ids"):
        encoder(batch["input_ids"].float(), batch["attention_mask"])
    with pytest.raises(ValueError, match=re.escape("all inputs must be on one device, got input_ids on meta, "
                                                   "attention_mask on cpu")):
        encoder(batch["input_ids"].to("meta"), batch["attention_mask"])
    with pytest.raises(TypeError, match="captions"):
        encoder.tokenize("a man")
    with pytest.raises(ValueError, match="^captions must be a non-empty list of strings, got an empty list$"):
        encoder.tokenize([])


def test_missing_vocabulary_is_an_error(tiny_bert_dir, tmp_path):
    """transformers loads a BERT tokenizer without its vocabulary files, knowing only the special
    tokens, so every word would become [UNK]; the encoder refuses such a directory."""
    stripped = tmp_path / "no_vocabulary"
    stripped.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, stripped / name)
    with pytest.raises(ValueError, match="no vocabulary beyond its"):
        TextEncoder(stripped)


def test_text_model_folders_that_do_not_load_are_one_line_saying_why(tiny_bert_dir, tmp_path):
    """transformers' messages ran to paragraphs: an empty folder asked for sentencepiece or tiktoken, an
    unknown model type for a transformers upgrade, a pickled pytorch_model.bin for torch's weights-only advice."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextModelFilesError, match=rf"^text model folder {re.escape(str(empty))} holds no config\.json"):
        TextEncoder(empty)
    unknown = tmp_path / "unknown"
    shutil.copytree(tiny_bert_dir, unknown)
    (unknown / "config.json").write_text('{"model_type": "bogus"}')
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, pickled)
    weights = safetensors.torch.load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    with (pickled / "pytorch_model.bin").open("wb") as stream:
        pickle.dump(weights, stream, protocol=4)
    for folder, reason in ((unknown, r"ValueError: .*bogus"), (pickled, re.escape(REFUSED_PICKLE) + "$")):
        with pytest.raises(TextModelFilesError) as refused:
            TextEncoder(folder)
        message = str(refused.value)
        assert "\n" not in message and len(message) < 600, message
        assert re.search(rf"text model folder {re.escape(str(folder))} do not load: {reason}", message), message


def test_a_caption_utf8_cannot_encode_is_named_by_index(tiny_bert_dir):
    """A lone surrogate (JSON "\\ud800") made the tokenizer raise a TypeError naming no caption."""
    encoder = TextEncoder(tiny_bert_dir, max_length=6)
    with pytest.raises(ValueError, match=re.escape("captions[1] must be encodable as UTF-8, as the text encoder's "
                                                   "tokenizer needs, got 'a man \\ud800'")):
        encoder.tokenize(["old woman", "a man \ud800"])


@pytest.mark.parametrize("caption, pieces", [
    ("[CLS] [SEP]", ["[", "cl", "##s", "]", "[", "sep", "]"]),
    ("a man [SEP] with glasses", ["a", "man", "[", "sep", "]", "with", "glasses"]),
    ("[PAD] [MASK]", ["[", "pad", "]", "[", "mask", "]"]),
])
def test_special_tokens_spelled_in_a_caption_are_words(caption, pieces):
    """A caption's "[SEP]" is text: word pieces counted in lengths, not the model's own marker (which
    made "[CLS] [SEP]" two "words" that were special tokens). `pieces`: BERT's uncased word pieces
    of the caption, written by hand."""
    encoder = TextEncoder(max_length=24, frozen=True)
    batch = encoder.tokenize([caption])
    vocab = encoder.tokenizer.get_vocab()
    expected = [vocab["[CLS]"], *(vocab[piece] for piece in pieces), vocab["[SEP]"]]
    assert batch["input_ids"][0, :len(expected)].tolist() == expected
    assert batch["attention_mask"][0].tolist() == [1] * len(expected) + [0] * (24 - len(expected))
    assert encoder(**batch).lengths.tolist() == [len(pieces)]


def test_a_long_caption_keeps_its_first_words_whatever_the_folder_says(tmp_path):
    """A model folder whose tokenizer_config.json says "truncation_side": "left" kept the last word
    pieces of a long caption, where the first max_length - 2 are documented; a warning says so, since a model saved
    by earlier tgfr kept that setting and was trained on the last pieces."""
    folder = tmp_path / "minilm_left"
    shutil.copytree(packaged_minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(packaged_minilm_path() / "model.safetensors")
    config_file = folder / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "truncation_side": "left"}))
    with pytest.warns(UserWarning, match=f"text model folder {folder} says \"truncation_side\": \"left\"; tgfr "
                                         "keeps the first max_length - 2 = 4 word pieces"):
        encoder = TextEncoder(folder, max_length=6, frozen=True)
    vocab = encoder.tokenizer.get_vocab()
    words = ["a", "young", "man", "with", "a", "beard", "and", "glasses"]
    expected = [vocab["[CLS]"], *(vocab[word] for word in words[:4]), vocab["[SEP]"]]
    assert encoder.tokenize([" ".join(words)])["input_ids"][0].tolist() == expected
    # Only "left" warns: not the packaged folder every run loads, nor one that says "right".
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "truncation_side": "right"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TextEncoder(folder, max_length=6, frozen=True)
        TextEncoder(max_length=6, frozen=True)
    assert not [warning for warning in caught if "truncation_side" in str(warning.message)]


def test_captions_are_padded_on_the_right_whatever_the_folder_says(tmp_path):
    """A folder whose tokenizer_config.json says "padding_side": "left" padded in front of the words, and the
    encoder, which reads captions as right-padded, refused every batch."""
    folder = tmp_path / "minilm_left_padded"
    shutil.copytree(packaged_minilm_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(packaged_minilm_path() / "model.safetensors")
    config_file = folder / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "padding_side": "left"}))
    encoder = TextEncoder(folder, max_length=8, frozen=True)
    batch = encoder.tokenize(["a man", "a young man with glasses"])
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    reference = TextEncoder(max_length=8, frozen=True)
    with torch.no_grad():
        expected = reference(**reference.tokenize(["a man", "a young man with glasses"]))
        for got, wanted in zip(encoder(**batch), expected):
            torch.testing.assert_close(got, wanted)


@pytest.mark.parametrize("caption", ["", "   ", "\u200b"])
def test_a_caption_without_a_word_is_named_by_tokenize(caption):
    encoder = TextEncoder(max_length=8, frozen=True)
    with pytest.raises(ValueError, match=re.escape(f"captions[1] = {caption!r} has no word for the text encoder")):
        encoder.tokenize(["a face", caption])


def test_a_tokenizer_that_adds_no_begin_and_end_tokens_is_refused(tmp_path):
    """GPT-2's tokenizer adds no special token: taken, every caption would lose its first and last words, which
    the encoder drops as the begin and end tokens."""
    special = ["<|endoftext|>"]
    printable = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["\u0120"]  # byte-level BPE's space
    (tmp_path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(special + printable)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert tokenizer.num_special_tokens_to_add() == 0
    GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=16)).save_pretrained(
        tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TextModelFilesError, match=re.escape(f"tokenizer in {tmp_path} must add exactly 2 special "
                                                            "tokens (begin and end), got 0")):
        TextEncoder(tmp_path)


def test_a_tokenizer_with_both_special_tokens_after_the_words_is_refused(tmp_path):
    """XLNet's layout ("$A [SEP] [CLS]") adds 2 special tokens too, both at the end: the encoder, which drops
    the first and the last attended token, lost each caption's first word and counted [SEP] as one."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "with", "beard", "old"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A [SEP] [CLS]", pair="$A [SEP] $B [SEP] [CLS]",
                                                           special_tokens=[("[SEP]", 3), ("[CLS]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path)
    assert tokenizer.num_special_tokens_to_add() == 2
    assert tokenizer.convert_ids_to_tokens(tokenizer("old man")["input_ids"]) == ["old", "man", "[SEP]", "[CLS]"]
    with pytest.raises(TextModelFilesError, match="^" + re.escape(
            f"tokenizer in {tmp_path} must add one special token before the words and one after them (as BERT's "
            "[CLS] ... [SEP]), but tokenizes 'a' as ['a', '[SEP]', '[CLS]']") + "$"):
        TextEncoder(tmp_path)


@pytest.mark.parametrize("bars_on", [True, False])
def test_loading_draws_no_progress_bar_and_leaves_the_callers_setting(tiny_bert_dir, capfd, bars_on):
    """transformers' "Loading weights" bar came on stderr before the one line of an error found after the load."""
    (transformers_logging.enable_progress_bar if bars_on else transformers_logging.disable_progress_bar)()
    try:
        capfd.readouterr()
        TextEncoder(str(tiny_bert_dir))
        TextEncoder(str(packaged_minilm_path()))
        assert "Loading weights" not in capfd.readouterr().err
        assert transformers_logging.is_progress_bar_enabled() == bars_on
    finally:
        transformers_logging.enable_progress_bar()


def test_a_tokenizer_with_more_tokens_than_the_model_has_embeddings_is_refused(tiny_bert_dir, tmp_path):
    """tokenizer.add_tokens + save_pretrained without the model's resize_token_embeddings loaded, and the first
    caption holding an added word failed in forward, maybe deep into a run. A tokenizer smaller than the table
    (embedding rows padded to a multiple) is legal."""
    rows = BertModel.from_pretrained(tiny_bert_dir).get_input_embeddings().num_embeddings
    added = tmp_path / "added_tokens"
    shutil.copytree(tiny_bert_dir, added)
    tokenizer = AutoTokenizer.from_pretrained(added)
    assert tokenizer.add_tokens(["freckles", "dimples"]) == 2 and len(tokenizer) == rows + 2
    tokenizer.save_pretrained(added)
    with pytest.raises(TextModelFilesError, match="^" + re.escape(
            f"tokenizer in {added} has {rows + 2} tokens, more than the {rows} rows of the text model's token "
            "embeddings (tokens added without resize_token_embeddings, or another model's tokenizer files?)") + "$"):
        TextEncoder(added)

    padded = tmp_path / "padded_table"
    model = BertModel.from_pretrained(tiny_bert_dir)
    model.resize_token_embeddings(rows, pad_to_multiple_of=64)
    model.save_pretrained(padded)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(padded)
    encoder = TextEncoder(padded, max_length=6)
    assert encoder.vocab_size == 64 > len(encoder.tokenizer) == rows
    assert encoder(**encoder.tokenize(["a man"])).lengths.tolist() == [2]


def test_an_empty_name_or_path_is_refused_not_taken_as_the_current_folder(tiny_bert_dir, monkeypatch):
    """As a Path, "" is ".": run from inside a model folder, TextEncoder("") loaded that folder silently."""
    monkeypatch.chdir(tiny_bert_dir)
    with pytest.raises(ValueError, match=r"^name_or_path is empty: name the text model folder, or give None for "
                                         r"the packaged all-MiniLM-L6-v2$"):
        TextEncoder("")


@pytest.mark.parametrize("text_model", ["tiny_clip_text_dir", "tiny_full_clip_dir"])
def test_cls_pooling_of_a_causal_text_model_is_refused(text_model, request):
    """CLIP's first token attends only to itself, so its last state is one vector whatever the caption."""
    folder = request.getfixturevalue(text_model)
    with pytest.raises(ValueError, match=r"^sentence_pooling='cls' .* causal text model in .* use 'pooled' .* or "
                                         r"'mean'$"):
        TextEncoder(folder, max_length=12, sentence_pooling="cls")
    # Why: the first token's state is the same for two different captions, while mean pooling tells them apart.
    encoder = TextEncoder(folder, max_length=12).eval()
    batch = encoder.tokenize(["a man with a beard", "blond woman"])
    with torch.no_grad():
        output = encoder.model(**batch)
        sentence = encoder(**batch).sentence
    assert torch.equal(output.last_hidden_state[0, 0], output.last_hidden_state[1, 0])
    assert not torch.allclose(sentence[0], sentence[1])


def test_cls_pooling_of_a_decoder_text_model_is_refused(tiny_bert_dir, tmp_path):
    """A BERT configured as a decoder (is_decoder: causal self-attention) has the same constant first token."""
    folder = tmp_path / "bert_decoder"
    shutil.copytree(tiny_bert_dir, folder)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "is_decoder": True}))
    with pytest.raises(ValueError, match=r"^sentence_pooling='cls' "):
        TextEncoder(folder, max_length=8, sentence_pooling="cls")
    TextEncoder(folder, max_length=8, sentence_pooling="mean")  # the other poolings still load it


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("pretrained", [True, False])
@pytest.mark.parametrize("text_model", ["tiny_bert_dir", "tiny_half_bert_dir", "tiny_full_clip_dir"])
def test_the_text_model_is_built_in_the_default_dtype(text_model, pretrained, request, float64_default):
    """Under torch.set_default_dtype(torch.float64) the backbone and heads are float64; a text model fixed at
    float32 beside them failed the first forward. A folder saved in float16 follows the default too."""
    folder = request.getfixturevalue(text_model)
    encoder = TextEncoder(folder, max_length=10, pretrained=pretrained).eval()
    assert {parameter.dtype for parameter in encoder.parameters()} == {torch.float64}
    with torch.no_grad():
        features = encoder(**encoder.tokenize(["a man with a beard"]))
    assert features.words.dtype == features.sentence.dtype == torch.float64
    if pretrained:  # the folder's weights, exactly (float64 holds every float32 and float16 value)
        stored = safetensors.torch.load_file(folder / "model.safetensors")
        compared = 0
        for name, tensor in encoder.model.state_dict().items():
            key = name if name in stored else f"text_model.{name}"  # a full CLIP's text tower
            if key in stored and stored[key].is_floating_point():
                assert torch.equal(tensor, stored[key].double()), name
                compared += 1
        assert compared > 10


def test_a_tokenizer_named_by_hub_id_fails_at_once_without_a_connection(monkeypatch, tmp_path):
    """conftest puts huggingface_hub in offline mode in the test process too: a load by hub name (say a model path
    that became a name) fails without a connection attempt, where it tried the network for half a minute."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(OSError, match="offline"):
        AutoTokenizer.from_pretrained("google-bert/bert-base-uncased", cache_dir=tmp_path)  # empty cache
    assert not attempts
