"""zhiyin train end to end on the tiny checkpoint: it learns a clip, its adapter loads in transformers with peft and
in zhiyin (generate, batch, serve), a resumed run is the uninterrupted one, and bad input gets one clear error."""

import io
import json
import shutil
import time

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.cli import main
from zhiyin.loading.adapters import AdapterError
from zhiyin.training.trainer import TrainOptions, train

CAPTION = "a solo trumpet, slow and bright"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, shared_audio):
    """One real clip (4 s of the trumpet) and its caption."""
    from conftest import trumpet

    folder = tmp_path_factory.mktemp("music")
    soundfile.write(folder / "trumpet.wav", trumpet(4.0), 32000)
    (folder / "trumpet.txt").write_text(CAPTION + "\n")
    return folder


def options(checkpoint, data, output, **changes):
    fields = dict(
        model=str(checkpoint),
        data=str(data),
        output=str(output),
        steps=100,
        lr=1e-2,
        rank=8,
        alpha=16,
        lm_heads=True,
        text_projection=True,
        segment_seconds=4.0,
        val_fraction=0.0,
        cond_dropout=0.1,
        save_every=50,
        val_every=50,
        seed=0,
    )
    return TrainOptions(**{**fields, **changes})


def greedy_agreement(model, processor, codes):
    """How many of the clip's first frames' codes greedy generation of its caption reproduces."""
    frames = 40
    inputs = processor(text=[CAPTION], return_tensors="pt")
    steps = frames + codes.shape[0] - 1  # the delay pattern's last codebook is 3 steps behind
    made = model.generate(**inputs, do_sample=False, max_new_tokens=steps, guidance_scale=1.0, return_codes=True)
    return (made[0, :, :frames] == codes[:, :frames]).float().mean().item()


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, clip_folder, tmp_path_factory):
    """100 steps on the trumpet clip: (adapter folder, the history of losses)."""
    output = tmp_path_factory.mktemp("adapter")
    train(options(tiny_checkpoint[0], clip_folder, output, overwrite=True), progress=False)
    history = [json.loads(line) for line in (output / "losses.jsonl").read_text().splitlines()]
    return output, history


def test_training_learns_the_clip(tiny_checkpoint, clip_folder, trained):
    folder, history = trained
    first, last = np.mean([e["loss"] for e in history[:5]]), np.mean([e["loss"] for e in history[-5:]])
    assert len(history) == 100 and last <= first / 2, (first, last)
    processor = MusicgenProcessor.from_pretrained(tiny_checkpoint[0])
    codes = next(iter(load_all_codes(folder).values()))
    before = greedy_agreement(MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0]), processor, codes)
    after = greedy_agreement(
        MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0], adapter=folder), processor, codes
    )
    assert after > before, (before, after)
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def load_all_codes(folder):
    return {path.name: torch.load(path, weights_only=True) for path in sorted((folder / "cache").glob("*.pt"))}


def test_the_adapter_is_in_peft_format_and_loads_into_transformers(tiny_checkpoint, trained):
    """peft.PeftModel.from_pretrained(<transformers MusicGen>, folder) gives the logits zhiyin gives with adapter=."""
    from peft import PeftModel

    folder, _ = trained
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    keys = load_file(folder / "adapter_model.safetensors")
    assert "base_model.model.decoder.model.decoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.decoder.model.decoder.layers.0.encoder_attn.v_proj.lora_B.weight" in keys
    assert (
        "base_model.model.decoder.lm_heads.3.lora_A.weight" in keys
        and "base_model.model.enc_to_dec_proj.lora_B.weight" in keys
    )
    reference = PeftModel.from_pretrained(tiny_checkpoint[1], str(folder)).eval()
    ours = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0], adapter=folder)
    processor = MusicgenProcessor.from_pretrained(tiny_checkpoint[0])
    inputs = processor(text=[CAPTION, "jazz"], padding=True, return_tensors="pt")
    tokens = torch.randint(0, 64, (2 * 4, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(**inputs, decoder_input_ids=tokens).logits  # [B * K, T, V]
        condition = ours._text_condition(ours.encode_text(**inputs).clone(), inputs["attention_mask"])
        cross = ours.decoder.project_text(condition.states, condition.mask)
        got = ours.decoder(tokens.view(2, 4, 9), cross, torch.arange(9)[None].expand(2, 9))
    base = MusicgenForConditionalGeneration.from_pretrained(tiny_checkpoint[0])
    with torch.no_grad():
        plain = base.decoder(
            tokens.view(2, 4, 9),
            base.decoder.project_text(condition.states, condition.mask),
            torch.arange(9)[None].expand(2, 9),
        )
    assert (got.reshape(want.shape) - want).abs().max() <= 1e-4 * want.abs().max()
    assert (plain.reshape(want.shape) - want).abs().max() > 1e-3 * want.abs().max()  # the adapter changed them


def test_the_adapter_works_in_generate_and_batch(tiny_checkpoint, trained, tmp_path, capsys):
    folder, _ = trained
    checkpoint = str(tiny_checkpoint[0])
    common = ["--model", checkpoint, "--duration", "0.5", "--seed", "4", "--quiet"]
    assert main(["generate", CAPTION, *common, "--adapter", str(folder), "-o", str(tmp_path / "a.wav")]) == 0
    assert main(["generate", CAPTION, *common, "-o", str(tmp_path / "plain.wav")]) == 0
    adapted, plain = soundfile.read(tmp_path / "a.wav")[0], soundfile.read(tmp_path / "plain.wav")[0]
    assert not np.array_equal(adapted, plain)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.wav")]) == 0
    assert f"--adapter {folder.resolve()}" in capsys.readouterr().out  # the command that makes it again
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "one", "prompt": CAPTION, "duration": 0.5, "seed": 4}) + "\n")
    out = tmp_path / "batch"
    assert main(["batch", str(jobs), "-o", str(out), "--model", checkpoint, "--adapter", str(folder), "--quiet"]) == 0
    assert np.array_equal(soundfile.read(out / "one.wav")[0], adapted)
    assert main(["generate", "x", *common, "--adapter", str(tmp_path), "-o", str(tmp_path / "b.wav")]) == 2
    assert "not an adapter folder" in capsys.readouterr().err


def test_resume_continues_exactly(tiny_checkpoint, clip_folder, tmp_path):
    """20 steps, stop (as Ctrl-C stops), resume for 20 more: the losses and the adapter of 40 uninterrupted steps."""
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    train(options(tiny_checkpoint[0], clip_folder, whole, steps=40, save_every=10, lora_dropout=0.1), progress=False)

    def stop(step):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            options(tiny_checkpoint[0], clip_folder, parted, steps=40, save_every=100, lora_dropout=0.1),
            progress=False,
            after_step=stop,
        )
    train(
        options(tiny_checkpoint[0], clip_folder, parted, steps=40, save_every=10, lora_dropout=0.1, resume=True),
        progress=False,
    )
    assert (whole / "losses.jsonl").read_text() == (parted / "losses.jsonl").read_text()
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(parted / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_gets_one_clear_error(tiny_checkpoint, clip_folder, trained, tmp_path, capsys):
    checkpoint = str(tiny_checkpoint[0])

    def run(*argv):
        code = main(["train", "--model", checkpoint, "--steps", "2", "--quiet", *argv])
        return code, capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run("--data", str(empty), "-o", str(tmp_path / "a"))
    assert code == 2 and "holds no audio files" in err
    uncaptioned = tmp_path / "uncaptioned"
    shutil.copytree(clip_folder, uncaptioned)
    soundfile.write(uncaptioned / "second.wav", np.zeros(16000, np.float32), 32000)
    soundfile.write(uncaptioned / "third.flac", np.zeros(16000, np.float32), 32000)
    code, err = run("--data", str(uncaptioned), "-o", str(tmp_path / "b"))
    assert code == 2 and "2 audio file(s)" in err and "second.wav" in err and "third.flac" in err
    broken = tmp_path / "broken"
    shutil.copytree(clip_folder, broken)
    (broken / "noise.wav").write_bytes(b"not audio at all")
    (broken / "noise.txt").write_text("noise")
    code, err = run("--data", str(broken), "-o", str(tmp_path / "c"), "--strict")
    assert code == 2 and "noise.wav" in err and "--strict" in err
    code, err = run("--data", str(broken), "-o", str(tmp_path / "d"), "--val-fraction", "0")
    assert code == 0 and "skipped 1 unreadable" in err and "noise.wav" in err
    code, err = run("--data", str(clip_folder), "-o", str(trained[0]))
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (trained[0] / "adapter_model.safetensors").is_file()  # nothing of the earlier run was touched
    code, err = run("--data", str(clip_folder), "-o", str(tmp_path / "d"), "--resume")
    assert code == 2 and "other settings" in err


def test_an_adapter_for_another_shape_is_refused(trained, tmp_path):
    from checkpoints import make_checkpoint

    make_checkpoint(tmp_path, "tiny-noproj")  # a decoder 32 wide, where the adapter's is 48
    with pytest.raises(AdapterError, match="made for another model"):
        MusicgenForConditionalGeneration.from_pretrained(tmp_path, adapter=trained[0])


def test_the_adapter_works_in_serve(tiny_checkpoint, trained, tmp_path):
    """zhiyin serve --adapter makes the music zhiyin generate --adapter makes with the same seed."""
    import httpx

    from serving.test_server import free_port, serve_process, wait_up

    folder, port = trained[0], free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve_process(tiny_checkpoint[0], tmp_path / "data", port, "--adapter", str(folder))
    try:
        wait_up(url, process)
        assert httpx.get(url + "/v1/models").json()["models"][0]["adapter"] == str(folder.resolve())
        job = httpx.post(url + "/v1/generations", json={"prompt": CAPTION, "duration": 0.5, "seed": 4}).json()
        for _ in range(600):
            if httpx.get(f"{url}/v1/generations/{job['id']}").json()["status"] == "succeeded":
                break
            time.sleep(0.1)
        served = soundfile.read(io.BytesIO(httpx.get(f"{url}/v1/generations/{job['id']}/audio").content))[0]
    finally:
        process.terminate()
        process.wait(60)
    argv = ["generate", CAPTION, "--model", str(tiny_checkpoint[0]), "--duration", "0.5", "--seed", "4", "--quiet"]
    assert main([*argv, "--adapter", str(folder), "-o", str(tmp_path / "cli.wav")]) == 0
    assert np.array_equal(served, soundfile.read(tmp_path / "cli.wav")[0])


def test_captions_from_metadata_and_a_validation_loss(tiny_checkpoint, clip_folder, tmp_path):
    """Captions from metadata.jsonl; a held-out file gives a validation loss every --val-every steps."""
    import soundfile as sf

    data = tmp_path / "music"
    data.mkdir()
    audio, rate = sf.read(clip_folder / "trumpet.wav")
    sf.write(data / "first.flac", audio[: 2 * rate], rate)
    sf.write(data / "second.ogg", audio[2 * rate :], rate)
    lines = [{"file": "first.flac", "text": "trumpet, the start"}, {"file": "second.ogg", "text": "trumpet, the end"}]
    (data / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "adapter"
    train(options(tiny_checkpoint[0], data, output, steps=4, val_fraction=0.5, val_every=2), progress=False)
    history = [json.loads(line) for line in (output / "losses.jsonl").read_text().splitlines()]
    assert [e["step"] for e in history if e.get("val_loss") is not None] == [2, 4]
    assert all(np.isfinite(e["val_loss"]) for e in history if "val_loss" in e)
    assert len(list((output / "cache").glob("*.pt"))) == 2


def test_without_the_train_extra_the_command_says_what_to_install(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    assert main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "needs peft: pip install 'zhiyin[train]'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
