"""A small T5-like tokenizer for tests, since the real T5 tokenizer files can't be downloaded here.

`make_t5_like_tokenizer(folder)` trains a tiny Unigram (SentencePiece-style) tokenizer with the `tokenizers`
library and saves it in the layout of the published MusicGen repos, so that both
`transformers.AutoTokenizer.from_pretrained(folder)` and `zhiyin.processor.MusicgenProcessor.from_pretrained`
load it and produce the same ids.

Layout, as in T5: `<pad>` = 0, `</s>` = 1, `<unk>` = 2; a Metaspace pre-tokenizer (words get a leading "▁");
every sequence ends with `</s>`. Two differences from the published files, both chosen so the two loaders agree:
- no NFKC normalizer: transformers rebuilds a T5 tokenizer and keeps only a SentencePiece "Precompiled"
  normalizer, which we can't produce without sentencepiece; a plain whitespace-collapsing normalizer stands in;
- `extra_ids` is 0: the published value (100) makes transformers append 100 `<extra_id_N>` tokens that this
  small vocabulary doesn't hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

SENTENCES = [
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
    "lofi slow bpm electro chill with organic samples",
    "a jazz vibraphone solo over a walking bass line and brushed drums",
    "calm piano melody with soft strings in the background",
    "upbeat funk groove with slap bass, horns and a tight snare",
    "epic orchestral score with choir, timpani and soaring violins",
    "acoustic folk ballad with finger-picked guitar and warm vocals",
    "dark techno with a pounding kick, metallic percussion and a rolling bassline",
    "happy reggae tune with offbeat guitar chops and a deep bass",
    "ambient soundscape with evolving pads and distant bells",
    "classical string quartet playing a slow, sad waltz in a minor key",
    "hip hop beat with dusty vinyl crackle, boom bap drums and a jazzy sample",
    "energetic drum and bass with fast breakbeats and a wobbling sub bass",
    "a solo trumpet playing a bright fanfare",
    "celesta and harp playing a delicate lullaby for children",
    "country song with banjo, fiddle and a steady train beat",
    "latin salsa with congas, timbales, piano montuno and brass section",
    "cinematic trailer music with huge drums, braams and rising tension",
    "Brahms Hungarian dance played by a string orchestra, fast and fiery",
    "a sweet waltz for accordion and guitar at a french cafe",
    "minimal electronic track at 120 bpm with a four on the floor kick",
    "blues shuffle with harmonica, electric guitar and a walking bass",
    "medieval folk music with lute, recorder and hand drums",
]


def _build_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        unk_token=UNK,
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", EOS],
        pair=["$A", EOS, "$B", EOS],
        special_tokens=[(EOS, eos_id)],
    )
    return tokenizer


def make_t5_like_tokenizer(folder, vocab_size: int = 200) -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`.

    Returns the vocabulary size actually produced (the trainer may stop below `vocab_size` on this small text).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    assert [tokenizer.token_to_id(t) for t in (PAD, EOS, UNK)] == [0, 1, 2]
    tokenizer.save(str(folder / "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 512,
        "extra_ids": 0,
        "additional_special_tokens": [],
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    special_tokens_map = {"eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2) + "\n")
    return tokenizer.get_vocab_size()
