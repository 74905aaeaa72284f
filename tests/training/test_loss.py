"""The training loss against transformers' MusicGen (the oracle): the same checkpoint, captions and codes give the
same number (float32, within 1e-5 relative), mono and stereo, with and without an audio prompt's frames."""

import pytest
import torch

from zhiyin import MusicgenForConditionalGeneration, MusicgenProcessor
from zhiyin.training.loss import IGNORED, delayed_inputs_and_labels, music_loss

from conftest import TEXTS


def losses(folder, reference, prompt_frames=0, frames=None, seed=0):
    model = MusicgenForConditionalGeneration.from_pretrained(folder)
    inputs = MusicgenProcessor.from_pretrained(folder)(text=TEXTS, padding=True, return_tensors="pt")
    K, V = model.config.decoder.num_codebooks, model.config.decoder.vocab_size
    codes = torch.randint(0, V, (2, K, 12), generator=torch.Generator().manual_seed(seed))
    lengths = None if frames is None else torch.tensor(frames)
    with torch.no_grad():
        states = model.encode_text(inputs["input_ids"], inputs["attention_mask"]).clone()
        condition = model._text_condition(states, inputs["attention_mask"])
        ours = music_loss(
            model.decoder, codes, model.decoder.project_text(condition.states, condition.mask), lengths, prompt_frames
        )
        tokens, labels = delayed_inputs_and_labels(model.decoder, codes, lengths, prompt_frames)
        theirs = reference(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=tokens.reshape(-1, tokens.shape[-1]),
            labels=labels.transpose(1, 2),
        ).loss
    return ours, theirs, labels


@pytest.mark.parametrize("prompt_frames", [0, 5])
def test_loss_equals_the_reference_mono(tiny_checkpoint, prompt_frames):
    ours, theirs, labels = losses(*tiny_checkpoint, prompt_frames)
    assert torch.isfinite(ours) and abs(ours.item() - theirs.item()) <= 1e-5 * abs(theirs.item())
    assert (labels[:, 0, :prompt_frames] == IGNORED).all() and (labels[:, 0, prompt_frames:12] != IGNORED).all()


@pytest.mark.parametrize("prompt_frames", [0, 5])
def test_loss_equals_the_reference_stereo(tiny_stereo_checkpoint, prompt_frames):
    ours, theirs, _ = losses(*tiny_stereo_checkpoint, prompt_frames)
    assert torch.isfinite(ours) and abs(ours.item() - theirs.item()) <= 1e-5 * abs(theirs.item())


def test_a_shorter_item_is_padded_and_its_padding_not_predicted(tiny_checkpoint):
    ours, theirs, labels = losses(*tiny_checkpoint, frames=[12, 7])
    assert abs(ours.item() - theirs.item()) <= 1e-5 * abs(theirs.item())
    assert (labels[1, 0, 7:] == IGNORED).all() and (labels[1, 3, 3:10] != IGNORED).all()
