"""A small T5-like tokenizer for tests, since the real T5 tokenizer files can't be downloaded here: the one
`zhiyin random-checkpoint` trains (zhiyin/random_checkpoint.py says how it differs from the published files, and
why transformers and zhiyin read it to the same ids)."""

from __future__ import annotations

from pathlib import Path

from zhiyin.processing.tokenizer import TextTokenizer
from zhiyin.random_checkpoint import TOKENIZER_CONFIG, train_t5_like_tokenizer


def make_t5_like_tokenizer(folder, vocab_size: int = 200) -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`; returns the
    vocabulary size actually produced (the trainer may stop below `vocab_size` on its small text)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_t5_like_tokenizer(vocab_size)
    TextTokenizer(tokenizer, TOKENIZER_CONFIG).save(str(folder))
    return tokenizer.get_vocab_size()
