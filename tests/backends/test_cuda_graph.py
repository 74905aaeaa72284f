"""The static-shape decoder step that cuda_graph.py captures as a CUDA graph, against the plain step.

The step itself is plain PyTorch (each row's position read from a buffer, cache writes by scatter, attention with a
mask of each row's positions), so it is checked here on the CPU, uncaptured (capture=False): logits and cache entries
step by step, greedy tokens through a whole generation, against transformers too. GraphStep's capture-and-replay
logic runs here too, with stand-ins for CUDA's streams and graph. The tests marked `cuda` capture and replay a real
graph; they run where a GPU is present (not in CI)."""

import contextlib

import pytest
import torch

import zhiyin.generation.loop as loop
from zhiyin import MusicgenForConditionalGeneration
from zhiyin.backends.cuda_graph import GraphStep
from zhiyin.backends.select import decoder_step
from zhiyin.generation.loop import Request, generate_codes
from zhiyin.generation.options import SamplingSettings

from conftest import relative_error
from decoder_steps import compare_steps, make_decoder, text_condition, text_states

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def uncaptured(decoder, cross):
    return GraphStep(decoder, cross, capture=False)


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_static_step_matches_the_plain_step(rows):
    decoder = make_decoder(seed=rows)
    compare_steps(decoder, text_condition(decoder, rows), rows, build=uncaptured)


def test_static_step_variants():
    stereo = make_decoder(seed=4, num_codebooks=8, audio_channels=2, activation_function="relu", scale_embedding=True)
    compare_steps(stereo, text_condition(stereo, 4), 4, build=uncaptured)
    melody = make_decoder(seed=5, cross_attention=False)  # no cross-attention; positions shifted by the prefix
    compare_steps(melody, None, 2, prefix=torch.randn(2, 7, melody.config.hidden_size), build=uncaptured)
    long = make_decoder(seed=6)  # a long cache, most of it masked at the first steps
    compare_steps(long, text_condition(long, 2, text_len=37), 2, prefill=300, steps=3, build=uncaptured)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8])
def test_static_step_with_narrow_caches(cache_dtype):
    decoder = make_decoder(seed=9)
    decoder.cache_dtype = cache_dtype  # both steps read and write the same narrow cache: the same numbers
    compare_steps(decoder, text_condition(decoder, 2), 2, build=uncaptured)


def test_bfloat16_static_step():
    decoder = make_decoder(seed=10).to(torch.bfloat16)
    compare_steps(decoder, text_condition(decoder, 2), 2, build=uncaptured, tolerance=2e-2)


def test_greedy_generation_through_the_static_step_is_token_identical(monkeypatch):
    decoder = make_decoder(seed=11)
    request = Request(
        text_states(decoder, 2),
        torch.randint(0, 64, (2, 4, 3)),
        30,  # batch 2, 4 rows with guidance
        SamplingSettings(do_sample=False, guidance_scale=3.0),
    )
    plain = generate_codes(decoder, request)
    steps = []
    monkeypatch.setattr(loop, "decoder_step", lambda d, c: steps.append(1) or uncaptured(d, c))
    static = generate_codes(decoder, request)
    assert len(steps) == 1
    assert torch.equal(static, plain)
    assert static.shape == (2, 4, 3 + 30 - 3)


def test_static_step_is_token_identical_to_transformers(tiny_checkpoint, monkeypatch):
    from transformers import AutoProcessor

    folder, reference = tiny_checkpoint
    seen = []
    decode = reference.audio_encoder.decode

    def recording_decode(codes, *args, **kwargs):
        seen.append(codes[0])  # [B, K, frames]
        return decode(codes, *args, **kwargs)

    monkeypatch.setattr(reference.audio_encoder, "decode", recording_decode)
    inputs = AutoProcessor.from_pretrained(folder)(
        text=["80s pop", "a jazz vibraphone solo"], padding=True, return_tensors="pt"
    )
    reference.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=30)
    ours = MusicgenForConditionalGeneration.from_pretrained(folder)
    monkeypatch.setattr(loop, "decoder_step", uncaptured)  # the static step in place of the fused one
    codes = ours.generate(**inputs, do_sample=False, guidance_scale=3, max_new_tokens=30, return_codes=True)
    assert torch.equal(codes, seen[0])


def test_static_step_errors_and_where_it_is_used():
    decoder = make_decoder(seed=12)
    decoder.setup_caches(2, 8)
    assert not isinstance(decoder_step(decoder, None), GraphStep)  # caches on the CPU: the plain or fused step runs
    step = uncaptured(decoder, text_condition(decoder, 2))
    with pytest.raises(IndexError, match="outside the KV cache"):
        step(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 8]))
    with pytest.raises(IndexError, match=r"must be \[2, 4\]"):
        step(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    decoder.free_caches()


@cuda
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_captured_step_matches_the_plain_step_on_cuda(dtype, tolerance):
    decoder = make_decoder(seed=13).to("cuda", dtype)
    compare_steps(decoder, text_condition(decoder, 2), 2, prefill=20, steps=8, build=GraphStep, tolerance=tolerance)


@cuda
def test_generation_on_cuda_with_and_without_the_graph(monkeypatch, tiny_checkpoint):
    folder, _ = tiny_checkpoint
    model = MusicgenForConditionalGeneration.from_pretrained(folder, device="cuda")
    inputs = {**model.get_unconditional_inputs(2), "guidance_scale": 3.0}  # 4 rows: each request's two
    with_graph = model.generate(**inputs, do_sample=False, max_new_tokens=40, return_codes=True)
    monkeypatch.setenv("ZHIYIN_CUDA_GRAPHS", "0")
    without = model.generate(**inputs, do_sample=False, max_new_tokens=40, return_codes=True)
    assert with_graph.device.type == "cuda"
    assert torch.equal(with_graph, without)
    audio = model.decode_audio(with_graph)
    assert audio.shape == (2, 1, 37 * 640) and torch.isfinite(audio).all()
    # EnCodec's LSTM on cuDNN there (written out on the CPU): the same audio to float rounding
    on_cpu = MusicgenForConditionalGeneration.from_pretrained(folder).decode_audio(with_graph.cpu())
    assert relative_error(audio.cpu(), on_cpu) < 1e-2  # (cuDNN may compute in TF32)


class _RecordedGraph:
    """A stand-in for torch.cuda.CUDAGraph on the CPU: capture runs the step once and keeps its output tensor;
    replay runs it again into that same tensor, as a real graph rewrites its output memory."""

    def __init__(self):
        self.step = self.output = None

    def replay(self):
        self.output.copy_(self.step())


def _stand_in_streams(monkeypatch):
    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def test_capture_and_replay_logic_with_a_stand_in_graph(monkeypatch):
    """GraphStep's own logic (fill the static inputs, capture once, replay, hand back a copy of the output) on the
    CPU, with CUDA's stream and graph calls replaced by stand-ins: the same logits as the plain step at every step."""
    graphs = []

    @contextlib.contextmanager
    def capture(graph):
        graphs.append(graph)
        real_step = GraphStep._step
        with monkeypatch.context() as m:  # the first step run inside the capture is the one the graph replays

            def recording(self):
                graph.step = lambda: real_step(self)
                graph.output = real_step(self)
                return graph.output

            m.setattr(GraphStep, "_step", recording)
            yield

    _stand_in_streams(monkeypatch)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    decoder = make_decoder(seed=14)
    compare_steps(
        decoder, text_condition(decoder, 2), 2, prefill=4, steps=6, build=lambda d, c: GraphStep(d, c, capture=True)
    )
    assert len(graphs) == 1  # captured once, replayed for every later step


def test_a_failed_capture_falls_back_to_the_step_without_a_graph(monkeypatch):
    @contextlib.contextmanager
    def failing_capture(graph):
        raise RuntimeError("operation not permitted when stream is capturing")
        yield

    _stand_in_streams(monkeypatch)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", failing_capture)
    decoder = make_decoder(seed=15)
    with pytest.warns(UserWarning, match="CUDA graph failed .*operation not permitted.*ZHIYIN_CUDA_GRAPHS=0"):
        compare_steps(
            decoder, text_condition(decoder, 2), 2, prefill=4, steps=4, build=lambda d, c: GraphStep(d, c, capture=True)
        )
