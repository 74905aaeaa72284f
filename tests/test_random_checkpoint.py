"""`zhiyin random-checkpoint`: a complete checkpoint of a published shape, made offline and without transformers,
that zhiyin and transformers both load."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from zhiyin import AutoProcessor, MusicgenForConditionalGeneration
from zhiyin.cli import main
from zhiyin.random_checkpoint import SHAPES, published_config

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def test_tiny_checkpoint_is_complete_and_transformers_agrees(tmp_path, capsys):
    import transformers

    folder = tmp_path / "tiny"
    assert main(["random-checkpoint", str(folder), "--shape", "tiny"]) == 0
    assert f"--model {folder}" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == FILES

    texts = ["80s pop track with bassy drums and synth", "lofi piano"]
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    inputs = AutoProcessor.from_pretrained(folder)(text=texts, padding=True, return_tensors="pt")
    theirs = transformers.MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    want = transformers.AutoProcessor.from_pretrained(folder)(text=texts, padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], want["input_ids"])
    tokens = torch.randint(0, 64, (8, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(**want, decoder_input_ids=tokens).logits
    got = ours(**inputs, decoder_input_ids=tokens).reshape(expected.shape)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-4
    assert ours.generation_config.guidance_scale == 3.0 and ours.generation_config.do_sample

    out = tmp_path / "song.wav"
    assert main(["generate", "lofi piano", "--model", str(folder), "--duration", "0.5", "--quiet", "-o", str(out)]) == 0
    assert soundfile.info(str(out)).frames == 25 * 640
    assert np.abs(soundfile.read(str(out))[0]).max() > 0


def test_published_shapes():
    small, stereo, melody = (published_config(shape) for shape in ("small", "stereo-large", "melody"))
    assert [small["decoder"][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim")] == [
        1024,
        24,
        16,
        4096,
    ]
    assert (small["decoder"]["num_codebooks"], small["decoder"]["vocab_size"], small["text_encoder"]["d_model"]) == (
        4,
        2048,
        768,
    )
    assert (
        stereo["decoder"]["num_codebooks"],
        stereo["decoder"]["audio_channels"],
        stereo["decoder"]["hidden_size"],
    ) == (8, 2, 2048)
    assert melody["model_type"] == "musicgen_melody" and melody["decoder"]["hidden_size"] == 1536
    assert set(SHAPES) >= {"small", "medium", "large", "stereo-small", "melody"}


def test_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "kept.txt").write_text("mine")
    assert main(["random-checkpoint", str(tmp_path), "--shape", "tiny"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    with pytest.raises(ValueError, match="unknown shape"):
        published_config("huge")


@pytest.mark.parametrize("shape", ["stereo-small", "melody", "stereo-melody"])
def test_stereo_and_melody_shapes_load_and_generate(tmp_path, monkeypatch, capsys, shape, shared_audio):
    """The published stereo and melody layouts, at tiny sizes (the real ones are GBs): each loads as its model and
    the command line makes music with it."""
    from zhiyin import random_checkpoint as rc
    from zhiyin.processing.chroma import MusicgenMelodyProcessor

    monkeypatch.setitem(rc.DECODERS, "small", rc.TINY_DECODER)
    monkeypatch.setitem(rc.DECODERS, "medium", rc.TINY_DECODER)
    monkeypatch.setattr(rc, "T5_BASE", dict(rc.TINY_T5, vocab_size=200))
    monkeypatch.setattr(rc, "ENCODEC_32KHZ", rc.TINY_ENCODEC)
    folder = tmp_path / shape
    rc.write_random_checkpoint(folder, shape)
    processor = AutoProcessor.from_pretrained(folder)
    stereo, melody = shape.startswith("stereo"), shape.endswith("melody")
    assert isinstance(processor, MusicgenMelodyProcessor) == melody
    argv = [
        "generate",
        "lofi piano",
        "--model",
        str(folder),
        "--duration",
        "0.5",
        "--quiet",
        "-o",
        str(tmp_path / "x.wav"),
    ]
    if melody:
        argv += ["--melody", str(shared_audio / "kevin_macleod_sugar_plum_fairy.ogg")]
    assert main(argv) == 0, capsys.readouterr().err
    info = soundfile.info(str(tmp_path / "x.wav"))
    assert (info.channels, info.frames) == (2 if stereo else 1, 25 * 640)
