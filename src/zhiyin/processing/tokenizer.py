"""The T5 tokenizer of a MusicGen checkpoint: `TextTokenizer`, run by the `tokenizers` library from tokenizer.json.
Text is padded on the right and every sequence ends with `</s>` (the tokenizer.json post-processor adds it)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from ..files import DamagedFileError, read_json, write_atomic, write_json
from ..loading.hub import resolve_file
from .inputs import BatchFeature, check_return_tensors, padding_strategy

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
# what transformers uses when tokenizer_config.json gives no model_max_length
UNLIMITED_LENGTH = int(1e30)

logger = logging.getLogger(__name__)


def _read_json(path: str | None) -> dict:
    return {} if path is None else read_json(path)


def _token_text(token: Any) -> str | None:
    """Special tokens are written either as "</s>" or as {"content": "</s>", ...}."""
    if isinstance(token, dict):
        return token.get("content")
    return token


# -------------------------------------------------------------------------------------------------- audio


class TextTokenizer:
    """The T5 tokenizer of a MusicGen checkpoint (a `tokenizers.Tokenizer` plus tokenizer_config.json)."""

    def __init__(self, tokenizer: Tokenizer, config: dict | None = None, special_tokens: dict | None = None):
        self.backend = tokenizer
        self.config = dict(config or {})
        special_tokens = dict(special_tokens or {})
        self.pad_token = _token_text(self.config.get("pad_token") or special_tokens.get("pad_token")) or "<pad>"
        self.eos_token = _token_text(self.config.get("eos_token") or special_tokens.get("eos_token")) or "</s>"
        self.unk_token = _token_text(self.config.get("unk_token") or special_tokens.get("unk_token")) or "<unk>"
        self.pad_token_id = tokenizer.token_to_id(self.pad_token)
        self.eos_token_id = tokenizer.token_to_id(self.eos_token)
        self.unk_token_id = tokenizer.token_to_id(self.unk_token)
        self.model_max_length = int(self.config.get("model_max_length") or UNLIMITED_LENGTH)
        self.padding_side = self.config.get("padding_side", "right")
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False))

    @classmethod
    def from_files(
        cls, tokenizer_file: str, config_file: str | None, special_tokens_file: str | None
    ) -> "TextTokenizer":
        try:
            backend = Tokenizer.from_file(tokenizer_file)
        except Exception as error:  # tokenizers raises a bare Exception for a file it can't parse
            raise DamagedFileError(
                f"'{tokenizer_file}' is not a valid tokenizer.json ({error}): download it again"
            ) from None
        return cls(backend, _read_json(config_file), _read_json(special_tokens_file))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(
        self,
        text: str | list[str],
        padding: bool | str = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """`input_ids` and `attention_mask` for one text or a batch, padded on the right with `<pad>`."""
        check_return_tensors(return_tensors)
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a non-empty list of strings")

        ids = [self._encode(t, truncation, max_length, add_special_tokens) for t in texts]
        ids, mask = self._pad(ids, padding_strategy(padding), max_length)

        if return_tensors is None:
            if single:
                return BatchFeature(input_ids=ids[0], attention_mask=mask[0])
            return BatchFeature(input_ids=ids, attention_mask=mask)
        if len({len(row) for row in ids}) > 1:
            raise ValueError("the texts have different lengths; pass padding=True to return them as one tensor")
        input_ids, attention_mask = np.array(ids, dtype=np.int64), np.array(mask, dtype=np.int64)
        if return_tensors == "pt":
            input_ids, attention_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        return BatchFeature(input_ids=input_ids, attention_mask=attention_mask)

    def _encode(
        self, text: str, truncation: bool | str | None, max_length: int | None, add_special_tokens: bool
    ) -> list[int]:
        encoding = self.backend.encode(text, add_special_tokens=False)
        if truncation not in (None, False, "do_not_truncate"):
            limit = max_length if max_length is not None else self.model_max_length
            if add_special_tokens:
                limit -= self.backend.num_special_tokens_to_add(is_pair=False)
            if limit < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
            encoding.truncate(limit)
        if add_special_tokens:
            encoding = self.backend.post_process(encoding, add_special_tokens=True)
        ids = list(encoding.ids)
        if len(ids) > self.model_max_length and truncation in (None, False, "do_not_truncate"):
            logger.warning(
                "a text has %d tokens, more than the tokenizer's model_max_length (%d); pass truncation=True to cut it",
                len(ids),
                self.model_max_length,
            )
        return ids

    def _pad(self, ids: list[list[int]], strategy: str, max_length: int | None) -> tuple[list, list]:
        if strategy == "longest":
            target = max(len(row) for row in ids)
        elif strategy == "max_length":
            target = max_length if max_length is not None else self.model_max_length
        else:
            return ids, [[1] * len(row) for row in ids]
        padded, mask = [], []
        for row in ids:
            fill = max(target - len(row), 0)
            if self.padding_side == "left":
                padded.append([self.pad_token_id] * fill + row)
                mask.append([0] * fill + [1] * len(row))
            else:
                padded.append(row + [self.pad_token_id] * fill)
                mask.append([1] * len(row) + [0] * fill)
        return padded, mask

    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> str:
        ids = _as_id_list(token_ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return _clean_up_spaces(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in sequences]

    def save(self, folder: str) -> list[str]:
        tokenizer_path = os.path.join(folder, TOKENIZER_FILE)
        write_atomic(tokenizer_path, self.backend.save)
        config = dict(self.config)
        config.update(
            tokenizer_class=config.get("tokenizer_class", "T5Tokenizer"),
            padding_side=self.padding_side,
            pad_token=self.pad_token,
            eos_token=self.eos_token,
            unk_token=self.unk_token,
            processor_class="MusicgenProcessor",
        )
        if self.model_max_length < UNLIMITED_LENGTH:
            config["model_max_length"] = self.model_max_length
        config_path = os.path.join(folder, TOKENIZER_CONFIG_FILE)
        write_json(config_path, config)
        special_path = os.path.join(folder, SPECIAL_TOKENS_MAP_FILE)
        special = {"eos_token": self.eos_token, "pad_token": self.pad_token, "unk_token": self.unk_token}
        if config.get("additional_special_tokens"):
            special["additional_special_tokens"] = config["additional_special_tokens"]
        write_json(special_path, special)
        return [tokenizer_path, config_path, special_path]


def _as_id_list(token_ids: Any) -> list[int]:
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.tolist()
    elif isinstance(token_ids, np.ndarray):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    return [int(i) for i in token_ids]


def _clean_up_spaces(text: str) -> str:
    """Remove the space a word-piece decode leaves before punctuation and English contractions."""
    for spaced, joined in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(spaced, joined)
    return text


def load_tokenizer(source: str | os.PathLike, hub_options: dict) -> TextTokenizer:
    tokenizer_file = resolve_file(source, TOKENIZER_FILE, required=False, **hub_options)
    if tokenizer_file is None:
        if resolve_file(source, "spiece.model", required=False, **hub_options) is not None:
            raise FileNotFoundError(
                f"'{os.fspath(source)}' has spiece.model but no tokenizer.json, which zhiyin needs (it does not read "
                "SentencePiece models). Get tokenizer.json from the checkpoint's repository, or create it once with "
                "transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
            )
        raise FileNotFoundError(f"'{os.fspath(source)}' has no tokenizer.json; the processor needs it")
    return TextTokenizer.from_files(
        tokenizer_file,
        resolve_file(source, TOKENIZER_CONFIG_FILE, required=False, **hub_options),
        resolve_file(source, SPECIAL_TOKENS_MAP_FILE, required=False, **hub_options),
    )
