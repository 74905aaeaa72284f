"""EnCodec: the neural audio codec whose discrete codes MusicGen models (32 kHz, mono, 4 codebooks).

A SEANet convolutional encoder turns audio [B, C, T] into latents [B, D, T / hop]; a residual vector
quantizer (RVQ) turns each latent frame into K codebook indices; the decoder mirrors the encoder.

Module and attribute names follow the Hugging Face checkpoints, so that after `fold_weight_norm` the
checkpoint keys load directly (`encoder.layers.0.conv.weight`, `quantizer.layers.0.codebook.embed`, ...).
Weight norm is folded at load, so every convolution here is a plain nn.Conv1d / nn.ConvTranspose1d.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EncodecConfig
from ..heap import large_tensors_from_heap

# Codebook buffers the checkpoints carry for k-means training; inference never reads them.
IGNORED_CHECKPOINT_SUFFIXES = ("codebook.inited", "codebook.cluster_size", "codebook.embed_avg")


def pad1d(x: Tensor, left: int, right: int, mode: str) -> Tensor:
    """F.pad on the last dim; reflect padding on an input shorter than the pad gets zeros appended first."""
    if left == right == 0:
        return x
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    x = F.pad(x, (0, extra))
    x = F.pad(x, (left, right), mode="reflect")
    return x[..., : x.shape[-1] - extra]


def _pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A kernel-1 convolution as a matrix product, bias first: oneDNN's 1x1 convolutions sum in an order that
    depends on the thread count, so the same seed would give other last bits at another thread count; this does not.
    x [B, C_in, T], weight [C_out, C_in] -> [B, C_out, T]."""
    if bias is None:
        return torch.matmul(weight, x)
    B, (C_out, C_in), T = x.shape[0], weight.shape, x.shape[-1]
    return torch.baddbmm(bias[None, :, None].expand(B, C_out, T), weight.expand(B, C_out, C_in), x)


class EncodecConv1d(nn.Module):
    """Conv1d that pads its input itself so that the output has exactly ceil(T / stride) frames."""

    def __init__(
        self, config: EncodecConfig, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1
    ):
        super().__init__()
        if config.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"norm_type must be 'weight_norm' or 'time_group_norm', got {config.norm_type!r}")
        self.causal = config.use_causal_conv
        self.pad_mode = config.pad_mode
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride, dilation=dilation)
        self.norm = nn.GroupNorm(1, c_out) if config.norm_type == "time_group_norm" else None
        self.stride = stride
        self.padding_total = (kernel_size - 1) * dilation + 1 - stride  # effective kernel minus stride
        # Decoder convs set this: pad inside the conv, no padded copy; the same numbers up to float rounding.
        # Encoder convs keep the reference's pad-then-conv arithmetic: their outputs feed argmins (codes) that
        # rounding differences can flip.
        self.pad_in_conv = False
        # a backend's faster convolution, which pads its input itself (backends/kernels.py's KernelConvolution), or None
        self.kernel_convolution: Callable[..., Tensor | None] | None = None

    def forward(self, x: Tensor, elu: bool = False) -> Tensor:  # [B, C_in, T] -> [B, C_out, ceil(T / stride)]
        """The convolution of x, or of ELU(x) where elu."""
        length = x.shape[-1]
        # extra right padding so that the last window is complete: padded length = ceil(T / s) * s + padding_total
        extra = math.ceil(length / self.stride) * self.stride - length
        if self.causal:
            left, right = self.padding_total, 0
        else:
            right = self.padding_total // 2
            left = self.padding_total - right
        if self.kernel_convolution is not None:  # it pads x itself (ELU(0) is 0)
            y = self.kernel_convolution(x, elu, left, right + extra, self.pad_mode)
            if y is not None:
                return y if self.norm is None else self.norm(y)
        if elu:
            x = F.elu(x)
        if self.conv.kernel_size[0] == 1 and self.stride == 1:
            x = _pointwise(x, self.conv.weight[:, :, 0], self.conv.bias)
        elif (
            self.pad_in_conv
            and self.pad_mode == "reflect"
            and self.stride == 1
            and left == right + extra
            and length >= 3 * left > 0
        ):
            x = self._conv_reflect_edges(x, left)  # the same numbers, without copying x into a padded buffer
        else:
            x = self.conv(pad1d(x, left, right + extra, self.pad_mode))
        return x if self.norm is None else self.norm(x)

    def _conv_reflect_edges(self, x: Tensor, pad: int) -> Tensor:
        """A stride-1 conv over x reflect-padded by `pad` on both sides: the conv's own zero padding is exact
        except for the first and last `pad` outputs, which are recomputed from reflect-padded edges of x."""
        conv = self.conv
        if conv.out_channels <= 2:  # the last conv (64 -> 1 at the sample rate): oneDNN is slow at such shapes
            y = _few_outputs_conv(x, conv.weight, conv.bias, pad, conv.dilation[0])
        else:
            y = F.conv1d(x, conv.weight, conv.bias, padding=pad, dilation=conv.dilation)  # [B, C_out, T]
        head = F.pad(x[..., : 3 * pad], (pad, 0), mode="reflect")  # the inputs of the first `pad` outputs
        tail = F.pad(x[..., -3 * pad :], (0, pad), mode="reflect")
        y[..., :pad] = F.conv1d(head, conv.weight, conv.bias, dilation=conv.dilation)[..., :pad]
        y[..., -pad:] = F.conv1d(tail, conv.weight, conv.bias, dilation=conv.dilation)[..., -pad:]
        return y


def _few_outputs_conv(x: Tensor, weight: Tensor, bias: Tensor | None, pad: int, dilation: int) -> Tensor:
    """F.conv1d(x, weight, bias, padding=pad, dilation=dilation) for a length-preserving conv with few output
    channels: every tap's outputs in one matrix product, then summed at their shifts (faster than oneDNN's
    convolution for 64 -> 1 channels: BENCHMARKS.md, "EnCodec and the heap"). The product is x^T W^T, T rows: W x,
    K * C_out rows, gave other last bits on 1 and 2 threads (MKL on Zen 4), so chunked decoding did too.
    x [B, C_in, T], weight [C_out, C_in, K] -> [B, C_out, T]."""
    (B, _, T), (C_out, C_in, K) = x.shape, weight.shape
    taps = torch.matmul(x.transpose(1, 2), weight.permute(1, 2, 0).reshape(C_in, K * C_out))  # [B, T, K * C_out]
    taps = taps.view(B, T, K, C_out).permute(0, 2, 3, 1)  # [B, K, C_out, T]
    y = torch.zeros(B, C_out, T, dtype=x.dtype, device=x.device) if bias is None else bias[:, None].repeat(B, 1, T)
    for k in range(K):  # output t takes tap k at input t + k * dilation - pad
        shift = k * dilation - pad
        y[..., max(0, -shift) : T - max(0, shift)] += taps[:, k, :, max(0, shift) : T + min(0, shift)]
    return y


class EncodecConvTranspose1d(nn.Module):
    """ConvTranspose1d that trims its fixed padding: T frames in, T * stride samples out."""

    def __init__(self, config: EncodecConfig, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        super().__init__()
        if config.norm_type not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"norm_type must be 'weight_norm' or 'time_group_norm', got {config.norm_type!r}")
        if not (config.use_causal_conv or config.trim_right_ratio == 1.0):
            raise ValueError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride)
        self.norm = nn.GroupNorm(1, c_out) if config.norm_type == "time_group_norm" else None
        padding_total = kernel_size - stride
        if config.use_causal_conv:
            self.trim_right = math.ceil(padding_total * config.trim_right_ratio)
        else:
            self.trim_right = padding_total // 2
        self.trim_left = padding_total - self.trim_right
        self.polyphase = self.norm is None and kernel_size == 2 * stride  # (_polyphase applies)
        self._polyphase_weights: tuple | None = None  # (what the weight was, taps, bias): _polyphase's
        # a backend's faster _polyphase (backends/kernels.py's KernelConvolution), or None
        self.kernel_convolution: Callable[..., Tensor | None] | None = None

    def forward(self, x: Tensor, elu: bool = False) -> Tensor:  # [B, C_in, T] -> [B, C_out, T * stride]
        """The transposed convolution of x, or of ELU(x) where elu."""
        y = self.kernel_convolution(x, elu) if self.polyphase and self.kernel_convolution is not None else None
        if y is None:
            x = F.elu(x) if elu else x
            y = self._polyphase(x) if self.polyphase else self.conv(x)  # [B, C_out, (T + 1) * stride]
            if self.norm is not None:
                y = self.norm(y)
        return y[..., self.trim_left : y.shape[-1] - self.trim_right]

    def _polyphase(self, x: Tensor) -> Tensor:
        """The transposed convolution with kernel 2s and stride s as one matrix product (faster on the CPU):
        output sample t*s + r is W[:, :, r]^T x[t] + W[:, :, s + r]^T x[t - 1], i.e. a kernel-2 convolution with
        C_out * s output channels, interleaved; both taps' products in one matmul over x, then added at their shift
        (a convolution would copy the weights into its own layout at every call: 32 MB for the largest).
        [B, C_in, T] -> [B, C_out, (T + 1) * s], untrimmed."""
        weight, s = self.conv.weight, self.conv.stride[0]  # [C_in, C_out, 2s]
        (B, C_in, T), C_out = x.shape, weight.shape[1]
        key = (weight.data_ptr(), weight.dtype, weight.device, None if weight.is_inference() else weight._version)
        made = self._polyphase_weights
        if made is None or made[0] != key:  # the taps made once per weight (again if it changed: .to(), a load)
            taps = torch.stack([weight[:, :, s:], weight[:, :, :s]])  # [2, C_in, C_out, s]: taps t-1, t
            taps = taps.permute(0, 2, 3, 1).reshape(2 * C_out * s, C_in)
            bias = self.conv.bias.repeat_interleave(s)[:, None] if self.conv.bias is not None else None
            made = self._polyphase_weights = (key, taps, bias)
        products = torch.matmul(made[1], F.pad(x, (1, 1))).view(B, 2, C_out * s, T + 2)
        y = products[:, 0, :, : T + 1] + products[:, 1, :, 1:]  # [B, C_out * s, T + 1]
        if made[2] is not None:
            y += made[2]
        return y.view(B, C_out, s, T + 1).transpose(2, 3).reshape(B, C_out, (T + 1) * s)


class LSTMArithmetic:
    """An LSTM layer's arithmetic, PyTorch's way: the input products of every frame at once, then the recurrence frame
    by frame. A backend may give EncodecLSTM a subclass of its own (backends/kernels.py's KernelLSTMArithmetic)."""

    @staticmethod
    def inputs(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Every frame's input products: x [T, B, C] weight^T [C, 4C] + bias -> [T, B, 4C]."""
        return F.linear(x, weight, bias)

    @staticmethod
    def recurrent(inputs: Tensor, h: Tensor, weight: Tensor) -> Tensor:
        """One frame's gates: inputs [B, 4C] + h [B, C] weight^T."""
        return torch.addmm(inputs, h, weight.t())

    @classmethod
    def frames(cls, inputs: Tensor, h: Tensor, c: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The recurrence over every frame: the gates' inputs [T, B, 4C] (i, f, g, o), the state h, c [B, C] before
        the first frame -> the outputs [T, B, C] and the state after the last."""
        T, B, C = inputs.shape[0], h.shape[0], h.shape[1]
        y = inputs.new_empty(T, B, C)
        for t in range(T):
            gates = cls.recurrent(inputs[t], h, weight)
            sig = gates.sigmoid()
            c = torch.addcmul(sig[:, C : 2 * C] * c, sig[:, :C], gates[:, 2 * C : 3 * C].tanh())
            h = y[t] = sig[:, 3 * C :] * c.tanh()
        return y, h, c


class EncodecLSTM(nn.Module):
    """Multi-layer LSTM over time with a skip connection, on channel-first tensors.

    The recurrence is written out (nn.LSTM holds the weights, under the checkpoint's keys): each layer's input
    products for all frames in one matrix product, then per frame the recurrent product and the gates. nn.LSTM's
    own CPU path costs ~30 ms a call before its first frame, which chunked decoding (ChunkedDecode) pays per chunk.
    The recurrent product reads the layer's 4C x C weights at every frame (16 MB for musicgen's codec; on a CPU a
    fifth of decoding's time, in the kernels). `arithmetic` computes them (LSTMArithmetic, or a backend's faster
    kind). On a GPU, where each of those small steps is a kernel launch, nn.LSTM itself runs (cuDNN).
    """

    def __init__(self, config: EncodecConfig, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, config.num_lstm_layers)
        self.arithmetic: type[LSTMArithmetic] = LSTMArithmetic

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T]
        return self.carry(x, None)[0]

    def carry(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """forward() from the state (h, c) [layers, B, C] an earlier call ended in (None: zeros); also returns the
        state after its own last frame."""
        x = x.permute(2, 0, 1).contiguous()  # [T, B, C] (the product of a permuted view sums per thread count)
        if x.is_cuda:  # cuDNN's LSTM: all frames in one call (written out, each frame is a few kernel launches)
            y, state = self.lstm(x, state)
            return (y + x).permute(1, 2, 0), state
        (_, B, C), lstm, last = x.shape, self.lstm, ([], [])
        y = x
        for layer in range(lstm.num_layers):
            bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            inputs = self.arithmetic.inputs(y, getattr(lstm, f"weight_ih_l{layer}"), bias)  # [T, B, 4C]: i, f, g, o
            h, c = (y.new_zeros(B, C), y.new_zeros(B, C)) if state is None else (state[0][layer], state[1][layer])
            y, h, c = self.arithmetic.frames(inputs, h, c, getattr(lstm, f"weight_hh_l{layer}"))
            last[0].append(h)
            last[1].append(c)
        return (y + x).permute(1, 2, 0), (torch.stack(last[0]), torch.stack(last[1]))  # [B, C, T]


def through(layers: nn.ModuleList, x: Tensor) -> Tensor:
    """x through the layers in turn, each ELU handed to the convolution after it (which a backend may apply as it
    reads its input: one pass over the activations less)."""
    elu = False
    for layer in layers:
        if isinstance(layer, nn.ELU) and layer.alpha == 1.0 and not elu:
            elu = True
        elif elu and isinstance(layer, (EncodecConv1d, EncodecConvTranspose1d)):
            x, elu = layer(x, elu=True), False
        else:
            x, elu = layer(F.elu(x) if elu else x), False
    return F.elu(x) if elu else x


class EncodecResnetBlock(nn.Module):
    """SEANet residual block: ELU, conv k (dim -> dim / compress), ELU, conv 1 (-> dim), plus a shortcut."""

    def __init__(self, config: EncodecConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.ModuleList(
            [
                nn.ELU(),  # not in place: x is still needed for the shortcut
                EncodecConv1d(config, dim, hidden, config.residual_kernel_size, dilation=dilation),
                nn.ELU(inplace=True),
                EncodecConv1d(config, hidden, dim, 1),
            ]
        )
        self.shortcut = EncodecConv1d(config, dim, dim, 1) if config.use_conv_shortcut else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [B, dim, T]
        return through(self.block, x).add_(self.shortcut(x))


class EncodecEncoder(nn.Module):
    """SEANet encoder: audio [B, C, T] -> latents [B, hidden_size, ceil(T / hop_length)]."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        dim = config.num_filters
        layers: list[nn.Module] = [EncodecConv1d(config, config.audio_channels, dim, config.kernel_size)]
        for ratio in reversed(config.upsampling_ratios):
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, dim, config.dilation_growth_rate**j))
            layers += [nn.ELU(inplace=True), EncodecConv1d(config, dim, dim * 2, kernel_size=2 * ratio, stride=ratio)]
            dim *= 2
        layers += [
            EncodecLSTM(config, dim),
            nn.ELU(inplace=True),
            EncodecConv1d(config, dim, config.hidden_size, config.last_kernel_size),
        ]
        self.layers = nn.ModuleList(layers)  # ELUs are list entries too, so the checkpoint indices line up

    def forward(self, x: Tensor) -> Tensor:
        return through(self.layers, x)


class EncodecDecoder(nn.Module):
    """SEANet decoder: latents [B, hidden_size, frames] -> audio [B, C, frames * hop_length]."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        dim = config.num_filters * 2 ** len(config.upsampling_ratios)
        layers: list[nn.Module] = [
            EncodecConv1d(config, config.hidden_size, dim, config.kernel_size),
            EncodecLSTM(config, dim),
        ]
        for ratio in config.upsampling_ratios:
            layers += [
                nn.ELU(inplace=True),
                EncodecConvTranspose1d(config, dim, dim // 2, kernel_size=2 * ratio, stride=ratio),
            ]
            dim //= 2
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, dim, config.dilation_growth_rate**j))
        layers += [nn.ELU(inplace=True), EncodecConv1d(config, dim, config.audio_channels, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)
        for module in self.modules():
            if isinstance(module, EncodecConv1d):
                module.pad_in_conv = True

    def forward(self, x: Tensor) -> Tensor:
        return through(self.layers, x)


class EncodecCodebook(nn.Module):
    """One codebook: `embed` [codebook_size, codebook_dim], nearest neighbour in Euclidean distance."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.register_buffer("embed", torch.zeros(config.codebook_size, config.codebook_dim))

    def encode(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T]
        # Distances in float32 even for bf16 weights: the argmax is sensitive to rounding.
        # Same expression as the reference, so float32 codes are bit-identical.
        flat = x.reshape(-1, x.shape[-1]).float()  # [B*T, D]
        embed = self.embed.float().t()  # [D, N]
        dist = -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices.view(x.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:  # [B, T] -> [B, T, D]
        return F.embedding(codes, self.embed)


class EncodecVectorQuantization(nn.Module):
    """Wrapper that exists only so that the key reads `quantizer.layers.{k}.codebook.embed`."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.codebook = EncodecCodebook(config)


class EncodecResidualVectorQuantizer(nn.Module):
    """K codebooks in sequence: each one quantizes what the previous ones left over."""

    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncodecVectorQuantization(config) for _ in range(config.num_quantizers)])

    def encode(self, x: Tensor, num_quantizers: int) -> Tensor:  # [B, D, T] -> [B, K, T]
        residual = x.transpose(1, 2)  # [B, T, D]
        codes = []
        for layer in self.layers[:num_quantizers]:
            idx = layer.codebook.encode(residual)  # [B, T]
            residual = residual - layer.codebook.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:  # [B, K, T] -> [B, D, T]
        out = 0
        for k in range(codes.shape[1]):
            out = out + self.layers[k].codebook.decode(codes[:, k])  # [B, T, D]
        return out.transpose(1, 2)


class EncodecModel(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        if 2 ** int(math.log2(config.codebook_size)) != config.codebook_size:
            raise ValueError("codebook_size must be a power of 2")
        self.config = config
        self.encoder = EncodecEncoder(config)
        self.decoder = EncodecDecoder(config)
        self.quantizer = EncodecResidualVectorQuantizer(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.quantizer.layers[0].codebook.embed.dtype

    def num_quantizers_for_bandwidth(self, bandwidth: float) -> int:
        bits_per_frame = math.log2(self.config.codebook_size) * self.config.frame_rate
        return max(1, math.floor(bandwidth * 1000 / bits_per_frame))

    def encode(self, input_values: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Audio [B, C, T] -> codes [B, K, ceil(T / hop_length)] at the smallest bandwidth (MusicGen's setting).

        As in the reference, `padding_mask` ([B, T] or [B, C, T], 1 = real sample) only zeroes the padded
        samples before encoding: every item still gets ceil(T / hop_length) frames, codes over padding included.
        """
        if self.config.normalize:
            # The reference would divide by the input RMS and hand the scale to decode; MusicGen
            # checkpoints have normalize=false, and our codes-only API has nowhere to carry a scale.
            raise NotImplementedError("EnCodec with normalize=True is not supported")
        if self.config.chunk_length_s is not None:
            raise NotImplementedError("chunked EnCodec (chunk_length_s set) is not supported")
        if input_values.dim() != 3 or input_values.shape[1] != self.config.audio_channels:
            raise ValueError(f"expected audio [B, {self.config.audio_channels}, T], got {tuple(input_values.shape)}")
        x = input_values.to(self.dtype)
        if padding_mask is not None:
            mask = padding_mask.reshape(padding_mask.shape[0], -1, padding_mask.shape[-1]).bool()  # [B, 1 or C, T]
            x = x * mask
        with large_tensors_from_heap():
            latents = self.encoder(x)  # [B, D, frames]
        return self.quantizer.encode(latents, self.num_quantizers_for_bandwidth(self.config.target_bandwidths[0]))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, K, frames] -> audio [B, C, frames * hop_length]."""
        with large_tensors_from_heap():
            return self.decoder(self.quantizer.decode(codes))


def reach(layers, scale: int) -> tuple[int, int]:
    """The inputs that one output frame of `layers` (stride-1 convolutions, residual blocks, transposed
    convolutions, ELUs; `scale` output samples per input frame) depends on: (frames before it, frames after it)."""

    def inputs(layer, a: int, b: int) -> tuple[int, int]:  # output samples a..b -> the input samples they read
        if isinstance(layer, EncodecConv1d):
            assert layer.stride == 1
            k, d = layer.conv.kernel_size[0], layer.conv.dilation[0]
            left = layer.padding_total if layer.causal else layer.padding_total - layer.padding_total // 2
            # at the start, reflect padding reads the first `left` samples after it: later ones, for a causal conv
            return a - left, max(b - left + (k - 1) * d, b + left if layer.pad_mode == "reflect" else b)
        if isinstance(layer, EncodecConvTranspose1d):  # untrimmed output u = t * s + j, 0 <= j < k
            k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
            return -((-(a + layer.trim_left - k + 1)) // s), (b + layer.trim_left) // s
        if isinstance(layer, EncodecResnetBlock):
            lo, hi = a, b  # the shortcut
            for inner in reversed(layer.block):
                a, b = inputs(inner, a, b)
            return min(a, lo), max(b, hi)
        if isinstance(layer, (nn.ELU, nn.Identity)):
            return a, b
        raise TypeError(f"no reach known for {type(layer).__name__}")

    frame = 1000  # any frame: the layers do the same everywhere
    a, b = frame * scale, frame * scale + scale - 1
    for layer in reversed(list(layers)):
        a, b = inputs(layer, a, b)
    return frame - a, b - frame


class ChunkedDecode:
    """One code sequence [B, K, frames] decoded chunk by chunk as its frames come, in memory that does not grow
    with its length. Each chunk's audio is the one-piece decode's (EncodecModel.decode) up to float rounding:

        codes -> first convolution -> LSTM, its state carried from chunk to chunk
        LSTM outputs -> the upsampling layers -> the chunk's samples

    Each layer sees only a few frames (reach(): MusicGen's 32 kHz codec's first convolution 3 frames either way, the
    layers after the LSTM one), so each chunk runs the LSTM over its new frames once, with the codes the convolution
    before it reads, then the layers after it over its own frames and those they read, and keeps its own samples. A
    chunk ending at frame `end` can be decoded once the codes reach end + lookahead (or the sequence has ended). The
    same sequence of chunk ends gives the same bits whichever way the codes arrived."""

    def __init__(self, codec: EncodecModel):
        if codec.config.norm_type != "weight_norm":
            raise NotImplementedError(
                f"decoding in chunks needs a codec whose layers see a few frames, not norm_type "
                f"{codec.config.norm_type!r} (normalized over the whole sequence); MusicGen's codecs use weight_norm"
            )
        self.codec = codec
        layers = codec.decoder.layers
        self.head = reach(layers[:1], 1)  # frames (before, after) the LSTM's input at a frame reads
        self.body = reach(layers[2:], codec.config.hop_length)  # LSTM outputs a frame's samples read
        self.lookahead = self.body[1] + self.head[1]
        self.codes: Tensor | None = None  # [B, K, n]: frames codes_base.. (those still needed)
        self.codes_base = 0
        self.hidden: Tensor | None = None  # LSTM outputs [B, C, m]: frames hidden_base..hidden_end - 1
        self.hidden_base = self.hidden_end = 0
        self.state: tuple[Tensor, Tensor] | None = None  # the LSTM's (h, c) after frame hidden_end - 1
        self.done = 0  # frames decoded

    @property
    def frames(self) -> int:
        """Frames added so far."""
        return self.codes_base + (0 if self.codes is None else self.codes.shape[-1])

    def add(self, codes: Tensor) -> None:
        """Appends frames [B, K, n]."""
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=-1)

    def ready(self, end: int, final: bool) -> bool:
        """Whether decode(end) can run now: the codes reach end + lookahead, or they are complete (final)."""
        return end <= self.frames and (final or self.frames >= end + self.lookahead)

    def decode(self, end: int) -> Tensor:
        """Audio [B, C, (end - done) * hop] of frames done..end-1; uses the codes up to end + lookahead only."""
        if not self.ready(end, final=True) or end <= self.done:
            raise ValueError(f"cannot decode frames {self.done}..{end - 1} of {self.frames}")
        decoder, hop = self.codec.decoder, self.codec.config.hop_length
        last = min(end + self.lookahead, self.frames)  # the codes this chunk may read: frames ..last - 1
        needed = min(end + self.body[1], last)  # LSTM outputs up to here
        with large_tensors_from_heap():
            if needed > self.hidden_end:  # the LSTM over its new frames, with the codes the conv before it reads
                lo = max(self.hidden_end - self.head[0], 0)
                hi = min(needed + self.head[1], last)
                x = self.codec.quantizer.decode(self.codes[..., lo - self.codes_base : hi - self.codes_base])
                x = decoder.layers[0](x)[..., self.hidden_end - lo : needed - lo]
                x, self.state = decoder.layers[1].carry(x, self.state)
                self.hidden = x if self.hidden is None else torch.cat([self.hidden, x], dim=-1)
                self.hidden_end = needed
            lo = max(self.done - self.body[0], 0)
            x = self.hidden[..., lo - self.hidden_base : needed - self.hidden_base].clone()  # the layers write in x
            x = through(decoder.layers[2:], x)
        audio = x[..., (self.done - lo) * hop : (end - lo) * hop]
        self.done = end
        self._forget()
        return audio

    def _forget(self) -> None:
        """Drops the codes and LSTM outputs no later chunk reads."""
        keep = max(self.hidden_end - self.head[0], 0)
        self.codes, self.codes_base = self.codes[..., keep - self.codes_base :], keep
        keep = max(self.done - self.body[0], 0)
        self.hidden, self.hidden_base = self.hidden[..., keep - self.hidden_base :], keep
