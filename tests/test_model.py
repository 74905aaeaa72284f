"""zhiyin against the transformers oracle on random tiny checkpoints: logits, greedy tokens, seeded sampling,
audio prompts, every checkpoint layout, save_pretrained round trip, and clear errors."""

import json
import shutil

import pytest
import torch

from zhiyin import ModelNotFoundError, MusicgenForConditionalGeneration, MusicgenProcessor

from checkpoints import make_checkpoint
from conftest import TEXTS, recording_decodes, reference_generate, relative_error, trumpet
from nearest import reference_takes_our_prompt_codes


@pytest.fixture(scope="module")
def pair(tiny_checkpoint):
    """(folder, reference model whose EnCodec decode records the codes it is given (while this module's tests run),
    ours, reference processor)."""
    from transformers import AutoProcessor

    folder, reference = tiny_checkpoint
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    with recording_decodes(reference) as seen:
        reference.seen = Latest(seen)
        yield folder, reference, ours, AutoProcessor.from_pretrained(folder)
    del reference.seen


class Latest:
    """seen["codes"]: the codes the reference decoded last."""

    def __init__(self, seen: list):
        self.seen = seen

    def __getitem__(self, key):
        return self.seen[-1]


@pytest.fixture(scope="module", params=["mono", "stereo"])
def shaped(request, tiny_checkpoint, tiny_stereo_checkpoint):
    """(folder, reference, the codes it decodes while this module runs, ours, reference processor), for the tiny
    mono and the tiny stereo checkpoint: the tests that take it hold for both."""
    from transformers import AutoProcessor

    folder, reference = tiny_checkpoint if request.param == "mono" else tiny_stereo_checkpoint
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    with recording_decodes(reference) as seen:
        yield folder, reference, seen, ours, AutoProcessor.from_pretrained(folder)


def test_logits_match_reference(shaped):
    folder, reference, seen, ours, processor = shaped
    K = ours.config.decoder.num_codebooks
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (2 * K, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(**inputs, decoder_input_ids=tokens).logits  # [B*K, T, V]
        want_text = reference.text_encoder(**inputs).last_hidden_state
    got = ours(**inputs, decoder_input_ids=tokens)  # [B, K, T, V]
    assert got.shape == (2, K, 9, 64)
    assert relative_error(got.reshape(2 * K, 9, 64), want) < 1e-4
    valid = inputs["attention_mask"].bool()
    got_text = ours.encode_text(inputs["input_ids"], inputs["attention_mask"])
    assert relative_error(got_text[valid], want_text[valid]) < 1e-4


def test_greedy_unconditional_token_identical(shaped):
    folder, reference, seen, ours, _ = shaped
    K, channels = ours.config.decoder.num_codebooks, ours.config.decoder.audio_channels
    want_audio, want = reference_generate(
        reference, seen, **reference.get_unconditional_inputs(2), do_sample=False, max_new_tokens=24
    )
    codes = ours.generate(**ours.get_unconditional_inputs(2), do_sample=False, max_new_tokens=24, return_codes=True)
    assert codes.shape == (2, K, 21)  # max_new_tokens - 3 frames, as the reference (stereo's delay is 3 too)
    assert torch.equal(codes, want)
    audio = ours.decode_audio(codes)
    assert audio.shape == want_audio.shape == (2, channels, 21 * 640)
    assert audio.dtype == torch.float32
    assert relative_error(audio, want_audio) < 1e-4


def test_greedy_text_guidance_padded_batch_token_identical(shaped):
    folder, reference, seen, ours, processor = shaped
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].sum(1).tolist()[0] != inputs["attention_mask"].sum(1).tolist()[1]
    want_audio, want = reference_generate(
        reference, seen, **inputs, do_sample=False, guidance_scale=3, max_new_tokens=40
    )
    audio = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=40)
    codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=40, return_codes=True)
    assert torch.equal(codes, want)
    assert audio.shape == want_audio.shape and relative_error(audio, want_audio) < 1e-4
    if ours.config.decoder.audio_channels == 2:
        assert not torch.equal(codes[:, 0::2], codes[:, 1::2])  # left and right are generated separately


def test_greedy_audio_prompt_and_text_token_identical(shaped):
    folder, reference, seen, ours, processor = shaped
    K, channels = ours.config.decoder.num_codebooks, ours.config.decoder.audio_channels
    clip = trumpet(0.75, channels=channels)  # [samples], or [2, samples] with a different right channel
    clips = [clip, clip[..., 6000:]]  # two lengths: the shorter one is left-padded
    inputs = processor(audio=clips, sampling_rate=32000, text=TEXTS, padding=True, return_tensors="pt")
    with reference_takes_our_prompt_codes(reference, ours.audio_encoder):
        want_audio, want = reference_generate(
            reference, seen, **inputs, do_sample=False, guidance_scale=3, max_new_tokens=16
        )
    codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=16, return_codes=True)
    prompt_frames = -(-24000 // 640)
    assert codes.shape == (2, K, prompt_frames + 16 - 3)
    assert torch.equal(codes, want)
    prompt = codes[..., :prompt_frames]
    assert len(torch.unique(prompt[:, 0])) > 5  # the prompt really was encoded
    if channels == 2:  # the prompt's codes are EnCodec's codes of each channel, interleaved
        left = ours.audio_encoder.encode(inputs["input_values"][:, :1], inputs["padding_mask"])
        right = ours.audio_encoder.encode(inputs["input_values"][:, 1:], inputs["padding_mask"])
        assert torch.equal(prompt[:, 0::2], left) and torch.equal(prompt[:, 1::2], right)
        assert not torch.equal(left, right)
    audio = ours.decode_audio(codes)
    assert audio.shape == want_audio.shape == (2, channels, codes.shape[-1] * 640)
    assert relative_error(audio, want_audio) < 1e-4
    # stripping the prompt's left padding gives each item its own length back
    stripped = MusicgenProcessor.from_pretrained(folder).batch_decode(audio, padding_mask=inputs["padding_mask"])
    assert stripped[0].shape[-1] == audio.shape[-1]
    assert stripped[1].shape[-1] == audio.shape[-1] - 6000


def test_sampling_same_seed_same_tokens_as_reference(shaped):
    folder, reference, seen, ours, processor = shaped
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(7)
    _, want = reference_generate(
        reference, seen, **inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=30
    )
    torch.manual_seed(7)
    first = ours.generate(**inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=30, return_codes=True)
    assert torch.equal(first, want)
    torch.manual_seed(7)
    again = ours.generate(**inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=30, return_codes=True)
    torch.manual_seed(8)
    other = ours.generate(**inputs, do_sample=True, guidance_scale=3, top_k=10, max_new_tokens=30, return_codes=True)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sampled_tokens_stay_in_top_k(pair, monkeypatch):
    """Record each step's guided logits and check every sampled token is among their top k."""
    import zhiyin.generation.loop as generation
    from zhiyin.generation.sampling import apply_guidance

    folder, reference, ours, processor = pair
    steps = []
    choose = generation.TokenChoice.__call__

    def recording_choice(self, logits, out=None):
        tokens = choose(self, logits, out)
        guided = apply_guidance(logits.float(), self.settings.guidance_scale)
        steps.append((guided, tokens[: guided.shape[0]].clone()))
        return tokens

    monkeypatch.setattr(generation.TokenChoice, "__call__", recording_choice)
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    ours.generate(**inputs, do_sample=True, guidance_scale=3, top_k=3, temperature=2.0, max_new_tokens=30)
    assert len(steps) == 30
    for guided, tokens in steps:
        top = guided.topk(3, dim=-1).indices  # [B, K, 3]
        assert (top == tokens[..., None]).any(-1).all()


def test_defaults_come_from_generation_config(pair):
    folder, reference, ours, processor = pair
    assert ours.generation_config.do_sample is True and ours.generation_config.guidance_scale == 3.0
    assert ours.generation_config.top_k == 50  # unset in the file: the reference's fallback
    inputs = processor(text=TEXTS[:1], return_tensors="pt")
    torch.manual_seed(1)
    reference.generate(**inputs, max_new_tokens=12)  # do_sample, guidance 3, top_k 50 from the config
    torch.manual_seed(1)
    codes = ours.generate(**inputs, max_new_tokens=12, return_codes=True)
    assert torch.equal(codes, reference.seen["codes"])


def test_numpy_inputs_work(pair):
    folder, reference, ours, processor = pair
    inputs = processor(text=TEXTS, padding=True, return_tensors="np")
    codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=10, return_codes=True)
    want = ours.generate(
        **processor(text=TEXTS, padding=True, return_tensors="pt"),
        do_sample=False,
        guidance_scale=3,
        max_new_tokens=10,
        return_codes=True,
    )
    assert torch.equal(codes, want)


@pytest.mark.parametrize("layout", ["bin-2023", "sharded", "sharded-bin"])
def test_every_checkpoint_layout_loads_the_same_model(layout, tmp_path, pair):
    folder, reference, ours, processor = pair
    make_checkpoint(tmp_path, "tiny", layout)  # same seed: the same weights
    other = MusicgenForConditionalGeneration.from_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert ("model.safetensors" in files) is False
    mine, theirs = ours.state_dict(), other.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.allclose(mine[key], theirs[key], rtol=1e-6, atol=1e-7), key


def test_no_projection_when_text_and_decoder_widths_match(tmp_path):
    from transformers import AutoProcessor

    reference = make_checkpoint(tmp_path, "tiny-noproj", "safetensors")
    ours = MusicgenForConditionalGeneration.from_pretrained(tmp_path)
    assert ours.enc_to_dec_proj is None
    inputs = AutoProcessor.from_pretrained(tmp_path)(text=TEXTS, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (8, 5))
    with torch.no_grad():
        want = reference(**inputs, decoder_input_ids=tokens).logits
    assert relative_error(ours(**inputs, decoder_input_ids=tokens).reshape(8, 5, 64), want) < 1e-4


def test_save_pretrained_round_trip_loads_in_reference(pair, tmp_path):
    from transformers import MusicgenForConditionalGeneration as Reference

    folder, reference, ours, processor = pair
    ours.save_pretrained(tmp_path)
    again = MusicgenForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, again.state_dict()[key], rtol=1e-6, atol=1e-6), key
    loaded = Reference.from_pretrained(tmp_path).eval()
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (8, 6))
    with torch.no_grad():
        want = reference(**inputs, decoder_input_ids=tokens).logits
        got = loaded(**inputs, decoder_input_ids=tokens).logits
    assert relative_error(got, want) < 1e-5
    assert json.loads((tmp_path / "generation_config.json").read_text())["guidance_scale"] == 3.0


def test_bfloat16_runs_and_stays_close(pair):
    folder, reference, ours, processor = pair
    half = MusicgenForConditionalGeneration.from_pretrained(folder, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (2, 4, 6))
    assert (
        relative_error(half(**inputs, decoder_input_ids=tokens).float(), ours(**inputs, decoder_input_ids=tokens))
        < 0.05
    )
    audio = half.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=8)
    assert audio.dtype == torch.float32 and audio.shape == (2, 1, 5 * 640)


def test_loads_from_the_hub_cache(pair, tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub: here a cache laid out as the hub client writes it, offline."""
    folder = pair[0]
    snapshot = tmp_path / "hub" / "models--facebook--musicgen-tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MusicgenForConditionalGeneration.from_pretrained("facebook/musicgen-tiny", cache_dir=tmp_path / "hub")
    assert model.config.decoder.num_codebooks == 4


def test_errors_are_clear(pair, tmp_path, monkeypatch):
    folder, reference, ours, processor = pair
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        MusicgenForConditionalGeneration.from_pretrained(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="facebook/musicgen-small.*(unreachable|offline)"):
        MusicgenForConditionalGeneration.from_pretrained("facebook/musicgen-small", cache_dir=tmp_path / "empty")
    (tmp_path / "empty_ckpt").mkdir()
    (tmp_path / "empty_ckpt" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        MusicgenForConditionalGeneration.from_pretrained(tmp_path / "empty_ckpt")
    inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    for bad, message in [
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=0.0), "temperature"),
        (dict(guidance_scale=0.5), "guidance_scale"),
        (dict(max_new_tokens=3), "max_new_tokens"),
        (dict(max_new_tokens=5000), "use generate_long"),
        (dict(num_beams=4), "num_beams"),
    ]:
        with pytest.raises(ValueError, match=message):
            ours.generate(**inputs, do_sample=True, max_new_tokens=bad.pop("max_new_tokens", 8), **bad)
    with pytest.raises(ValueError, match="get_unconditional_inputs"):
        ours.generate(max_new_tokens=8)


def test_no_network_fails_at_once_with_the_clear_error(tmp_path, monkeypatch):
    """Without a network (the hub's name does not resolve) the error comes at once, not after the hub client's
    half minute of retries."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror("Name or service not known")

    calls = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        lambda *a, **k: calls.append(k.get("local_files_only")) or real_download(*a, **k),
    )
    with pytest.raises(ModelNotFoundError, match="facebook/musicgen-small.*unreachable.*hf download"):
        MusicgenForConditionalGeneration.from_pretrained("facebook/musicgen-small", cache_dir=tmp_path / "empty")
    assert calls == [True]  # only the cache was asked


def test_unconditional_inputs_carry_max_new_tokens(pair):
    """transformers' documentation calls get_unconditional_inputs(num_samples=1, max_new_tokens=256)."""
    _, _, ours, _ = pair
    inputs = ours.get_unconditional_inputs(num_samples=2, max_new_tokens=13)
    codes = ours.generate(**inputs, do_sample=False, return_codes=True)
    assert codes.shape == (2, 4, 13 - 3)
    with pytest.raises(ValueError, match="num_samples"):
        ours.get_unconditional_inputs(num_samples=0)


@pytest.mark.parametrize("setting", ["guidance_scale", "temperature", "top_p"])
def test_sampling_settings_must_be_finite(pair, setting):
    _, _, ours, processor = pair
    inputs = processor(text=TEXTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        ours.generate(**inputs, max_new_tokens=8, **{setting: float("nan")})
    with pytest.raises(ValueError, match="duration must be a finite number"):
        ours.generate_long(**inputs, duration=float("inf"))


def test_too_long_audio_prompt_is_refused_before_encoding(pair, monkeypatch):
    _, _, ours, processor = pair
    inputs = processor(text=TEXTS[:1], return_tensors="pt")
    monkeypatch.setattr(ours, "encode_audio", lambda *a, **k: pytest.fail("encoded a prompt that can't fit"))
    with pytest.raises(ValueError, match="keep only its last seconds"):
        ours.generate(**inputs, input_values=torch.zeros(1, 1, 32000 * 60), max_new_tokens=8)
