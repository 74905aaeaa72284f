"""A complete MusicGen checkpoint with random weights, for trying every command without the hub:

    zhiyin random-checkpoint ./musicgen-small-random --shape small
    zhiyin generate "lofi piano" --model ./musicgen-small-random -o song.wav

The shapes are those of the published checkpoints (facebook/musicgen-small, -medium, -large, their stereo
versions, and -melody / -stereo-melody, whose decoder is medium's), plus "tiny" for quick trials. The folder holds
what a hub repo holds: config.json, generation_config.json (the published one), model.safetensors (written as
transformers writes it), and the processor's files. Random weights make noise, not music, but at the real sizes:
loading, memory and speed are those of the real models.

The tokenizer is a small T5-like one trained here on a few music descriptions (the real T5 vocabulary can't be
made offline): <pad> = 0, </s> = 1, <unk> = 2; a Metaspace pre-tokenizer (words get a leading "▁"); every sequence
ends with </s>. transformers' AutoTokenizer reads it too and gives the same ids. Two differences from the
published files, both so that the two agree: no NFKC normalizer (transformers keeps only a SentencePiece
"Precompiled" one, which can't be made without sentencepiece; a whitespace-collapsing one stands in), and
`extra_ids` 0 (the published 100 would make transformers append 100 <extra_id_N> tokens this vocabulary lacks).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

T5_BASE = dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=3072,
    num_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="relu",
)
ENCODEC_32KHZ = dict(
    sampling_rate=32000,
    upsampling_ratios=[8, 5, 4, 4],
    num_filters=64,
    hidden_size=128,
    codebook_size=2048,
    codebook_dim=128,
    target_bandwidths=[2.2],
    use_causal_conv=False,
    use_conv_shortcut=False,
    compress=2,
    num_lstm_layers=2,
    normalize=False,
    audio_channels=1,
    chunk_length_s=None,
    overlap=None,
)
DECODERS = {
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096),
    "medium": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, ffn_dim=6144),
    "large": dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, ffn_dim=8192),
}
# tiny: a few MB, for trying the commands in seconds (a T5 of width 32, EnCodec with 8 filters and 64-entry codebooks)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="relu")
TINY_ENCODEC = dict(
    ENCODEC_32KHZ, num_filters=8, hidden_size=16, codebook_size=64, codebook_dim=16, target_bandwidths=[1.2]
)
TINY_DECODER = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96)
SHAPES = (
    "tiny",
    "small",
    "medium",
    "large",
    "stereo-small",
    "stereo-medium",
    "stereo-large",
    "melody",
    "stereo-melody",
)
GENERATION_CONFIG = dict(
    do_sample=True,
    guidance_scale=3.0,
    max_length=1500,
    pad_token_id=2048,
    bos_token_id=2048,
    decoder_start_token_id=2048,
)


def published_config(shape: str, text_vocab: int = 32128) -> dict:
    """config.json contents for facebook/musicgen-{shape} (or the tiny shape, whose text vocabulary is the trained
    tokenizer's)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}': use one of {', '.join(SHAPES)}")
    stereo, melody = shape.startswith("stereo-"), shape.endswith("melody")
    size = shape.removeprefix("stereo-")
    tiny = size == "tiny"
    audio = dict(TINY_ENCODEC if tiny else ENCODEC_32KHZ)
    codebooks = audio["codebook_size"]  # the decoder's vocabulary is the codec's codebook
    decoder = dict(
        TINY_DECODER if tiny else DECODERS["medium" if melody else size],
        vocab_size=codebooks,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        max_position_embeddings=2048,
        activation_function="gelu",
        pad_token_id=codebooks,
        bos_token_id=codebooks,
        decoder_start_token_id=codebooks,
        scale_embedding=False,
    )
    text = dict(TINY_T5, vocab_size=text_vocab) if tiny else dict(T5_BASE)
    config = {"text_encoder": text, "audio_encoder": audio, "decoder": decoder}
    if melody:
        config.update(model_type="musicgen_melody", num_chroma=12, chroma_length=235)
    return config


def write_random_checkpoint(folder: str | os.PathLike, shape: str = "small", seed: int = 0) -> Path:
    """Write a complete checkpoint of `shape` with random weights (seeded) into `folder`; returns the folder."""
    import torch

    from .config import GenerationConfig, MusicgenConfig, MusicgenMelodyConfig
    from .model import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    from .processing.chroma import MusicgenMelodyFeatureExtractor, MusicgenMelodyProcessor
    from .processing.processor import AudioFeatureExtractor, MusicgenProcessor
    from .processing.tokenizer import TextTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_t5_like_tokenizer()
    raw = published_config(shape, text_vocab=tokenizer.get_vocab_size())
    melody = raw.get("model_type") == "musicgen_melody"
    config = (MusicgenMelodyConfig if melody else MusicgenConfig).from_dict(raw)
    pad = config.decoder.pad_token_id
    generation = GenerationConfig.from_dict(
        dict(GENERATION_CONFIG, pad_token_id=pad, bos_token_id=pad, decoder_start_token_id=pad)
    )
    torch.manual_seed(seed)
    model = (MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration)(config, generation)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
        for layer in model.audio_encoder.quantizer.layers:  # codebooks are buffers, left at zero by construction
            layer.codebook.embed.normal_()
    model.save_pretrained(folder)
    text = TextTokenizer(tokenizer, TOKENIZER_CONFIG)
    assert [tokenizer.token_to_id(t) for t in (PAD, EOS, UNK)] == [0, 1, 2]
    channels = config.decoder.audio_channels
    if melody:
        processor = MusicgenMelodyProcessor(MusicgenMelodyFeatureExtractor(), text)
    else:
        audio = AudioFeatureExtractor(
            sampling_rate=config.audio_encoder.sampling_rate, feature_size=channels, padding_side="left"
        )
        processor = MusicgenProcessor(audio, text)
    processor.save_pretrained(folder)
    return folder


TOKENIZER_CONFIG = {
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


def train_t5_like_tokenizer(vocab_size: int = 200) -> Tokenizer:
    """The T5-like tokenizer described above, trained on SENTENCES (the trainer may stop below `vocab_size`)."""
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
