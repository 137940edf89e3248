"""Caption features for training and evaluation, with a cache while the text encoder cannot change.

A frozen text encoder, or a trainable one while none of its weights trains (in the fuse stage and
in evaluation), maps a caption to the same features every time, so each distinct caption is
encoded once and kept (float16, valid words only; the encoder's sentence feature is not kept: the
TGFR model makes its own from the words, in the TextCNN head). On CPU this removes the text encoder
from all but the first epoch, its largest cost. An encoder that trains runs on every batch, and
the features cached before it trained are dropped.

With more than one thread the encoder's output for a caption changes in its last bits with the
other captions of its batch (the matrix products split their work by shape). Filled with what
each training batch happened to miss, the cache would depend on the order of the batches, and a
resumed process, which starts with an empty cache, would not reproduce the run. `prefill`
encodes a whole vocabulary (training: every caption of the split) in a fixed grouping, so a
caption's features depend only on that vocabulary. Captions outside it are still encoded on
demand, in chunks of the batch's missing captions.
"""

from collections.abc import Iterable
from typing import NamedTuple

import torch

from tgfr.models import TextEncoder
from tgfr.word_mask import valid_word_mask


class CaptionWords(NamedTuple):
    words: torch.Tensor  # (B, T, H) the text encoder's word features, zeros at padded positions
    lengths: torch.Tensor  # (B,) int64, number of words
    mask: torch.Tensor  # (B, T) bool, word t valid iff t < lengths[i]


class CaptionFeatures:
    """captions (list of B strings) -> CaptionWords (words (B, T, H), lengths, mask) on `device`."""

    def __init__(self, encoder: TextEncoder, device: torch.device, chunk: int = 256):
        self.encoder, self.device, self.chunk = encoder, device, chunk
        self.num_words = encoder.max_length - 2
        self.cache: dict[str, torch.Tensor] = {}  # caption -> (lengths, H) float16 word features

    def refresh_cache(self) -> bool:
        """Whether the cache serves features now: the encoder cannot change (frozen, or none of its
        weights requires grad). While it can, the cache is emptied, since training moves the
        features it holds."""
        fixed = self.encoder.frozen or not any(p.requires_grad for p in self.encoder.parameters())
        if not fixed:
            self.cache.clear()
        return fixed

    def _encode(self, captions: list[str]) -> CaptionWords:
        batch = {name: value.to(self.device) for name, value in self.encoder.tokenize(captions).items()}
        features = self.encoder(**batch)
        return CaptionWords(features.words, features.lengths, features.mask)

    def _store(self, captions: list[str]) -> None:
        """Encodes `captions` in chunks of `chunk` and caches those not cached yet (a cached
        caption keeps the features it was first served with)."""
        # Kept for a whole stage, and computed again by evaluation in eval mode: a trainable encoder left in
        # training mode by the align stage would cache one dropout draw per caption, and a process resumed
        # inside the stage (its model freshly built) another one.
        modes = [(module, module.training) for module in self.encoder.modules()]  # train() would set all alike
        self.encoder.eval()
        try:
            self._store_chunks(captions)
        finally:
            for module, training in modes:
                module.training = training

    def _store_chunks(self, captions: list[str]) -> None:
        for start in range(0, len(captions), self.chunk):
            part = captions[start:start + self.chunk]
            with torch.no_grad():
                features = self._encode(part)
            for i, caption in enumerate(part):
                if caption not in self.cache:
                    length = int(features.lengths[i])
                    self.cache[caption] = features.words[i, :length].to("cpu", torch.float16)

    def prefill(self, captions: Iterable[str]) -> None:
        """Caches the distinct `captions`, sorted and encoded in chunks of `chunk`, so that each
        one's features depend on this vocabulary only; chunks already cached are skipped. Nothing
        to do while the encoder can change (refresh_cache)."""
        if not self.refresh_cache():
            return
        vocabulary = sorted(set(captions))
        for start in range(0, len(vocabulary), self.chunk):
            part = vocabulary[start:start + self.chunk]
            if any(caption not in self.cache for caption in part):
                self._store(part)

    def __call__(self, captions: list[str]) -> CaptionWords:
        if not self.refresh_cache():
            return self._encode(captions)
        self._store(list(dict.fromkeys(c for c in captions if c not in self.cache)))
        entries = [self.cache[c] for c in captions]
        lengths = torch.tensor([caption_words.shape[0] for caption_words in entries], dtype=torch.int64)
        words = torch.zeros(len(captions), self.num_words, entries[0].shape[1])
        for i, caption_words in enumerate(entries):
            words[i, :caption_words.shape[0]] = caption_words.float()
        mask = valid_word_mask(lengths, self.num_words)
        return CaptionWords(words.to(self.device), lengths.to(self.device), mask.to(self.device))
