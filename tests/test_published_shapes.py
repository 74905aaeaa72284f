"""The published musicgen-small shapes (decoder 1024 wide, 24 layers, 16 heads, 4 x 2048 codebooks; t5-base;
EnCodec 32 kHz) with random weights: zhiyin against transformers. Slower (about a minute); CI runs it."""

import pytest
import torch

from zhiyin import MusicgenForConditionalGeneration
from zhiyin.processing.audio_io import read_audio

from checkpoints import make_checkpoint
from conftest import relative_error
from nearest import assert_same_codes, reference_takes_our_prompt_codes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from transformers import AutoProcessor

    folder = tmp_path_factory.mktemp("small")
    reference = make_checkpoint(folder, "small", "safetensors")
    seen = {}
    decode = reference.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        seen["codes"] = codes[0]
        return decode(codes, *args, **kwargs)

    reference.audio_encoder.decode = recording_decode
    reference.seen = seen
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    yield reference, ours, AutoProcessor.from_pretrained(folder)


def test_small_shapes_match_reference(small, shared_audio):
    reference, ours, processor = small
    c = ours.config
    assert (c.decoder.hidden_size, c.decoder.num_hidden_layers, c.decoder.num_attention_heads) == (1024, 24, 16)
    assert (c.decoder.num_codebooks, c.decoder.vocab_size, c.text_encoder.d_model) == (4, 2048, 768)

    texts = ["80s pop track with bassy drums and synth", "90s rock song with loud guitars and heavy drums"]
    inputs = processor(text=texts, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 2048, (8, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_text = reference.text_encoder(**inputs).last_hidden_state
        want_logits = reference(**inputs, decoder_input_ids=tokens).logits
    valid = inputs["attention_mask"].bool()
    assert (
        relative_error(ours.encode_text(inputs["input_ids"], inputs["attention_mask"])[valid], want_text[valid]) < 1e-4
    )
    assert relative_error(ours(**inputs, decoder_input_ids=tokens).reshape(8, 5, -1), want_logits) < 1e-4

    # EnCodec on real music: the same codes (where a nearest entry ties, either pick), audio within 1e-4
    clip = torch.from_numpy(read_audio(shared_audio / "kevin_macleod_vibe_ace.ogg", 32000, 1)[:, 32000:96000])[None]
    with torch.no_grad():
        want_codes = reference.audio_encoder.encode(clip).audio_codes[0]
        want_audio = decode(reference, want_codes)
    codes = ours.encode_audio(clip)
    assert codes.shape == (1, 4, 100)
    assert_same_codes(ours.audio_encoder, clip, codes, want_codes)
    assert relative_error(ours.decode_audio(want_codes), want_audio) < 1e-4

    # greedy with guidance on a padded batch, and with an audio prompt: token-identical
    reference.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=8)
    got = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=8, return_codes=True)
    assert torch.equal(got, reference.seen["codes"])
    prompted = processor(audio=clip[0, 0, :16000].numpy(), sampling_rate=32000, text=texts[:1], return_tensors="pt")
    with reference_takes_our_prompt_codes(reference, ours.audio_encoder):
        reference.generate(**prompted, do_sample=False, guidance_scale=3, max_new_tokens=6)
    got = ours.generate(**prompted, do_sample=False, guidance_scale=3, max_new_tokens=6, return_codes=True)
    assert got.shape == (1, 4, 25 + 3)
    assert torch.equal(got, reference.seen["codes"])


def decode(reference, codes):
    return reference.audio_encoder.decode(codes[None], [None]).audio_values
