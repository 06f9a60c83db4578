"""The int8 device part: post-training quantisation and the bit-exact integer reference.

docs/FIRMWARE.md section 1 is the arithmetic. ``Int8Model.run`` is the reference the C kernels in
``c/agn_model.c`` must match byte for byte; it runs a whole batch in numpy. Integer products are
summed in float64 matrix products, which is exact here: every sum is below 2^31, far inside the
53-bit mantissa, and BLAS makes the full MNIST test set take seconds instead of minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..codec import CodecSettings, FeatureCodec
from ..entropy import ContextPrior, prior_from_bytes
from .memplan import Buffer, MemoryPlan, plan_memory

RELU6_MAX = 6.0
INPUT_SCALE = 1.0 / 255.0
WEIGHT_MAX = 127
BIAS_LIMIT = 1 << 30  # keeps bias + any sum of uint8 x int8 products inside int32 in C
MAX_INPUT_BYTES = 16384  # one console request must fit the device's receive buffer
MAX_ARENA_BYTES = 24 * 1024  # of the MCU's 32 KB of RAM; the rest is stack and protocol buffers
LUT_SIZE = 256
MODEL_HASH_BYTES = 8


@dataclass(frozen=True)
class Dims:
    """What a firmware is compiled for; the AGW1 header carries these twelve bytes."""

    in_ch: int
    in_h: int
    in_w: int
    stem_ch: int
    feat_ch: int
    local_ch: int
    feat_h: int
    feat_w: int
    n_centroids: int
    classes: int
    stem_stride: int
    dw_stride: int

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if min(values) < 1 or max(values) > 255:
            raise ValueError(f"every firmware dimension must lie in [1, 255] (one byte): {self}")
        if self.stem_stride not in (1, 2) or self.dw_stride not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, not {self.stem_stride} and {self.dw_stride}")
        if not 1 <= self.local_ch < self.feat_ch:
            raise ValueError(f"local channels {self.local_ch} must lie in [1, {self.feat_ch - 1}]")
        if self.n_centroids < 2:
            raise ValueError("a quantizer needs at least 2 centroids")
        if (self.feat_h, self.feat_w) != (_out_size(self.stem_h, self.dw_stride),
                                          _out_size(self.stem_w, self.dw_stride)):
            raise ValueError(f"feature map {self.feat_h}x{self.feat_w} does not follow from the input "
                             f"{self.in_h}x{self.in_w} and strides {self.stem_stride}, {self.dw_stride}")

    def as_tuple(self) -> tuple[int, ...]:
        return (self.in_ch, self.in_h, self.in_w, self.stem_ch, self.feat_ch, self.local_ch,
                self.feat_h, self.feat_w, self.n_centroids, self.classes, self.stem_stride, self.dw_stride)

    @property
    def stem_h(self) -> int:
        return _out_size(self.in_h, self.stem_stride)

    @property
    def stem_w(self) -> int:
        return _out_size(self.in_w, self.stem_stride)

    @property
    def remote_ch(self) -> int:
        return self.feat_ch - self.local_ch

    @property
    def input_bytes(self) -> int:
        return self.in_ch * self.in_h * self.in_w

    @property
    def local_inputs(self) -> int:
        return self.local_ch * self.feat_h * self.feat_w

    @property
    def symbol_shape(self) -> tuple[int, int, int]:
        return (self.remote_ch, self.feat_h, self.feat_w)

    def activation_plan(self) -> MemoryPlan:
        """docs/FIRMWARE.md section 5: step 0 stem, 1 depthwise, 2 pointwise, 3 local and coder."""
        feature_pixels = self.feat_h * self.feat_w
        return plan_memory([
            Buffer("input", self.input_bytes, 0, 0),
            Buffer("stem", self.stem_ch * self.stem_h * self.stem_w, 0, 1),
            Buffer("dw", self.stem_ch * feature_pixels, 1, 2),
            Buffer("pw", self.feat_ch * feature_pixels, 2, 3),
        ])


def _out_size(n: int, stride: int) -> int:
    return (n + 2 - 3) // stride + 1  # kernel 3, padding 1


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """int8 weights (out, fan_in), int32 bias, and the requantisation multiplier per output channel."""

    weights: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray

    def check(self, name: str, shape: tuple[int, int]) -> None:
        if self.weights.dtype != np.int8 or self.weights.shape != shape:
            raise ValueError(f"{name} weights must be int8 of shape {shape}, not "
                             f"{self.weights.dtype} {self.weights.shape}")
        for field in ("bias", "mult", "shift"):
            array = getattr(self, field)
            if array.dtype != np.int32 or array.shape != (shape[0],):
                raise ValueError(f"{name} {field} must be int32 of shape ({shape[0]},)")
        _check_bias(self.bias, name)
        if self.mult.min() < 0 or self.shift.min() < 1 or self.shift.max() > 62:
            raise ValueError(f"{name} requantisation needs mult >= 0 and shift in [1, 62]")


def _check_bias(bias: np.ndarray, name: str) -> None:
    if np.abs(bias.astype(np.int64)).max(initial=0) > BIAS_LIMIT:
        raise ValueError(f"{name} bias exceeds +-2^30: the int32 accumulator could overflow")


@dataclass(frozen=True, eq=False)
class Int8Outputs:
    features: np.ndarray  # uint8 (N, F, FH, FW): the pointwise output, scale s_pw
    acc: np.ndarray  # int32 (N, classes): the local predictor's accumulators
    logits: np.ndarray  # float32 (N, classes): float32(acc) * scale, before the cast to half
    logits_f16: np.ndarray  # uint16 (N, classes): the IEEE half bits the device sends
    local_class: np.ndarray  # int64 (N,): argmax of logits, first on a tie
    symbols: np.ndarray  # uint8 (N, F - k, FH, FW): centroid indices of the remote channels


@dataclass(frozen=True, eq=False)
class Int8Model:
    """Everything an AGW1 image holds (docs/FIRMWARE.md section 2), as numpy arrays."""

    dims: Dims
    model_hash: bytes
    stem: ConvLayer  # weights (S, C_in * 9)
    depthwise: ConvLayer  # weights (S, 9)
    pointwise: ConvLayer  # weights (F, S)
    qmax: np.ndarray  # int32 (3,): stem, depthwise, pointwise
    local_weights: np.ndarray  # int8 (classes, k * FH * FW)
    local_bias: np.ndarray  # int32 (classes,)
    local_scale: np.ndarray  # float32 (classes,)
    centroid_lut: np.ndarray  # uint8 (256,)
    prior: bytes  # Prior.to_bytes() of a context prior

    def __post_init__(self) -> None:
        d = self.dims
        if len(self.model_hash) != MODEL_HASH_BYTES:
            raise ValueError(f"the model hash takes {MODEL_HASH_BYTES} bytes, not {len(self.model_hash)}")
        self.stem.check("stem", (d.stem_ch, d.in_ch * 9))
        self.depthwise.check("depthwise", (d.stem_ch, 9))
        self.pointwise.check("pointwise", (d.feat_ch, d.stem_ch))
        qmax = self.qmax
        if qmax.dtype != np.int32 or qmax.shape != (3,) or qmax.min() < 0 or qmax.max() > 255:
            raise ValueError("activation limits must be 3 int32 values in [0, 255]")
        if self.local_weights.dtype != np.int8 or self.local_weights.shape != (d.classes, d.local_inputs):
            raise ValueError(f"local weights must be int8 of shape {(d.classes, d.local_inputs)}")
        if self.local_bias.dtype != np.int32 or self.local_bias.shape != (d.classes,):
            raise ValueError(f"local bias must be int32 of shape ({d.classes},)")
        _check_bias(self.local_bias, "local")
        if self.local_scale.dtype != np.float32 or self.local_scale.shape != (d.classes,):
            raise ValueError(f"local logit scales must be float32 of shape ({d.classes},)")
        if not np.all(np.isfinite(self.local_scale)):
            raise ValueError("local logit scales must be finite")
        if self.centroid_lut.dtype != np.uint8 or self.centroid_lut.shape != (LUT_SIZE,):
            raise ValueError(f"the centroid table must be {LUT_SIZE} uint8 values")
        if self.centroid_lut.max() >= d.n_centroids:
            raise ValueError(f"the centroid table names symbols beyond {d.n_centroids} centroids")
        check_prior(self.prior, d)

    @property
    def codec_settings(self) -> CodecSettings:
        return CodecSettings(n_centroids=self.dims.n_centroids, layout="rans", prior=self.prior)

    def run(self, images: np.ndarray, chunk: int = 1024) -> Int8Outputs:
        """The integer forward pass over uint8 images (N, C, H, W), exactly as the firmware computes it."""
        images = np.asarray(images)
        d = self.dims
        if images.dtype != np.uint8 or images.shape[1:] != (d.in_ch, d.in_h, d.in_w):
            raise ValueError(f"expected uint8 images (N, {d.in_ch}, {d.in_h}, {d.in_w}), not "
                             f"{images.dtype} {images.shape}")
        parts = [self._run_chunk(images[i:i + chunk]) for i in range(0, len(images), max(1, chunk))]
        if not parts:
            parts = [self._run_chunk(images)]
        return Int8Outputs(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))

    def payloads(self, outputs: Int8Outputs) -> list[bytes]:
        """The wire payload of each sample: the codec's rans header and body."""
        codec = FeatureCodec(self.codec_settings)
        return [codec.encode(symbols) for symbols in outputs.symbols]

    def _run_chunk(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        d = self.dims
        n = len(images)
        patches = _patches3x3(images, d.stem_stride)  # (N, C_in, 9, P)
        acc = _matmul(self.stem.weights, patches.reshape(n, d.in_ch * 9, -1)) + self.stem.bias[:, None]
        stem = _requantize(acc, self.stem, int(self.qmax[0])).reshape(n, d.stem_ch, d.stem_h, d.stem_w)
        taps = _patches3x3(stem, d.dw_stride)  # (N, S, 9, P)
        weights = self.depthwise.weights.astype(np.int64)[None, :, :, None]
        acc = (taps.astype(np.int64) * weights).sum(axis=2) + self.depthwise.bias[:, None]
        dw = _requantize(acc, self.depthwise, int(self.qmax[1]))
        acc = _matmul(self.pointwise.weights, dw) + self.pointwise.bias[:, None]
        pw = _requantize(acc, self.pointwise, int(self.qmax[2]))
        features = pw.reshape(n, d.feat_ch, d.feat_h, d.feat_w)
        local = features[:, :d.local_ch].reshape(n, -1)
        local_acc = _matmul(self.local_weights, local[:, :, None])[:, :, 0] + self.local_bias
        logits = local_acc.astype(np.int32).astype(np.float32) * self.local_scale  # one float32 multiply
        with np.errstate(over="ignore"):  # beyond half range is inf, on the device too
            logits_f16 = logits.astype(np.float16).view(np.uint16)
        symbols = self.centroid_lut[features[:, d.local_ch:]]
        return features, local_acc.astype(np.int32), logits, logits_f16, logits.argmax(axis=1), symbols


def _patches3x3(x: np.ndarray, stride: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, 9, OH * OW): the 3x3 windows of a padding-1 conv, tap-major per channel."""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = [padded[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            for ky in range(3) for kx in range(3)]
    return np.stack(taps, axis=2).reshape(n, c, 9, oh * ow)


def _matmul(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int8 (O, K) @ uint8 (N, K, P) -> int64 (N, O, P), exact: every sum stays below 2^53."""
    return np.matmul(weights.astype(np.float64), x.astype(np.float64)).astype(np.int64)


def _requantize(acc: np.ndarray, layer: ConvLayer, qmax: int) -> np.ndarray:
    """y = clamp((acc * mult + 2^(shift-1)) >> shift, 0, qmax) per output channel (axis 1)."""
    if acc.min(initial=0) < -(1 << 31) or acc.max(initial=0) >= 1 << 31:
        raise ValueError("an accumulator left int32: the firmware would overflow")
    mult = layer.mult.astype(np.int64)[:, None]
    shift = layer.shift.astype(np.int64)[:, None]
    y = (acc * mult + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(y, 0, qmax).astype(np.uint8)


def check_prior(prior: bytes, dims: Dims) -> ContextPrior:
    """The prior as the firmware needs it: a context prior over the remote symbols' shape."""
    parsed = prior_from_bytes(prior)
    if not isinstance(parsed, ContextPrior):
        raise ValueError(f"the firmware codes with a context prior, not a {parsed.kind} prior")
    if parsed.shape != dims.symbol_shape or parsed.n_symbols != dims.n_centroids:
        raise ValueError(f"the prior codes {parsed.n_symbols} symbols of shape {parsed.shape}, the model "
                         f"sends {dims.n_centroids} of shape {dims.symbol_shape}")
    return parsed


# --------------------------------------------------------------------------- quantisation


@dataclass(frozen=True)
class ActivationScales:
    """Real value of one uint8 step after each ReLU6: stem, depthwise, pointwise."""

    stem: float
    depthwise: float
    pointwise: float


def _conv_bn(block: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv, norm = block[0], block[1]  # type: ignore[index]
    assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
    return conv, norm


def firmware_dims(checkpoint: Checkpoint) -> Dims:
    """The model's dims, or ValueError naming what the firmware cannot run."""
    config, codec = checkpoint.config, checkpoint.codec
    if codec.layout != "rans":
        raise ValueError(f"the firmware codes payloads as layout rans only, not {codec.layout!r}")
    if config.local_pool != config.feature_size:
        raise ValueError(f"the firmware's local predictor has no pooling: local_pool {config.local_pool} "
                         f"must equal the feature map size {config.feature_size}")
    stem_stride = 2 if config.extractor_stride >= 2 else 1
    dw_stride = config.extractor_stride // stem_stride
    if config.n_centroids > 255:
        raise ValueError(f"the AGW1 header holds at most 255 centroids, not {config.n_centroids}")
    size = config.image_size
    input_bytes = config.in_channels * size * size
    if input_bytes > MAX_INPUT_BYTES:
        raise ValueError(f"an input of {input_bytes} bytes (in_channels x H x W) exceeds the firmware's "
                         f"{MAX_INPUT_BYTES}")
    dims = Dims(config.in_channels, size, size, config.stem_channels, config.feature_channels,
                config.local_channels, config.feature_size, config.feature_size, config.n_centroids,
                config.num_classes, stem_stride, dw_stride)
    arena = dims.activation_plan().arena_bytes
    if arena > MAX_ARENA_BYTES:
        raise ValueError(f"the activations need a {arena}-byte arena; the firmware has {MAX_ARENA_BYTES}")
    check_prior(codec.prior, dims)
    return dims


@torch.no_grad()
def calibrate(checkpoint: Checkpoint, images: np.ndarray, percentile: float = 100.0,
              chunk: int = 1000) -> ActivationScales:
    """Scales from the float extractor on training images: the largest (or a percentile of the)
    activation per layer, at most 6, over 255."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError("calibrate on a non-empty batch of uint8 images (N, C, H, W)")
    extractor = checkpoint.build_model().extractor
    stages = (extractor.stem, extractor.depthwise, extractor.pointwise)
    samples: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk].astype(np.float32) / 255.0)
        for index, stage in enumerate(stages):
            x = stage(x)
            values = x.numpy().ravel()
            samples[index].append(values if percentile < 100 else values.max(keepdims=True))
    peaks = [float(np.percentile(np.concatenate(s), percentile)) if percentile < 100 else
             float(np.concatenate(s).max()) for s in samples]
    # A dead layer (all zeros) gets the full ReLU6 range: any scale gives it 0.
    scales = [min(peak, RELU6_MAX) / 255.0 if peak > 0 else RELU6_MAX / 255.0 for peak in peaks]
    return ActivationScales(*scales)


def quantize_model(checkpoint: Checkpoint, calibration_images: np.ndarray,
                   percentile: float = 100.0) -> Int8Model:
    """Post-training int8 quantisation per docs/FIRMWARE.md section 1, calibrated on training images."""
    dims = firmware_dims(checkpoint)
    scales = calibrate(checkpoint, calibration_images, percentile)
    model = checkpoint.build_model()
    extractor = model.extractor
    stem = _quantize_conv(*_conv_bn(extractor.stem), INPUT_SCALE, scales.stem)
    depthwise = _quantize_conv(*_conv_bn(extractor.depthwise), scales.stem, scales.depthwise)
    pointwise = _quantize_conv(*_conv_bn(extractor.pointwise), scales.depthwise, scales.pointwise)
    qmax = np.array([_qmax(s) for s in (scales.stem, scales.depthwise, scales.pointwise)], dtype=np.int32)
    linear = model.local_predictor.linear
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    wq, sw = _symmetric_int8(w)
    bias = _round_bias(b / (scales.pointwise * sw), "local")
    local_scale = (scales.pointwise * sw).astype(np.float32)
    steps = torch.from_numpy((np.arange(LUT_SIZE) * scales.pointwise).astype(np.float32))
    lut = model.quantizer.quantize(steps).numpy().astype(np.uint8)
    return Int8Model(dims, bytes.fromhex(checkpoint.model_hash), stem, depthwise, pointwise, qmax,
                     wq, bias, local_scale, lut, checkpoint.codec.prior)


def _qmax(scale: float) -> int:
    return min(255, round(RELU6_MAX / scale))


def _symmetric_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output row: scale max|w| / 127 (1 for an all-zero row) and weights rounded to [-127, 127]."""
    flat = w.reshape(len(w), -1)
    peak = np.abs(flat).max(axis=1)
    scale = np.where(peak > 0, peak / WEIGHT_MAX, 1.0)
    q = np.clip(np.rint(flat / scale[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scale


def _round_bias(values: np.ndarray, name: str) -> np.ndarray:
    rounded = np.rint(values)
    if np.abs(rounded).max(initial=0) > BIAS_LIMIT:
        raise ValueError(f"{name} bias needs more than +-2^30 steps of its input scale: a weight "
                         f"channel is too small for its bias to quantise")
    return rounded.astype(np.int32)


def _quantize_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d, scale_in: float, scale_out: float) -> ConvLayer:
    """Fold the batch norm into the conv, quantise per output channel, derive the multipliers."""
    assert norm.running_mean is not None and norm.running_var is not None
    gain = norm.weight.detach().double().numpy() / np.sqrt(norm.running_var.double().numpy() + norm.eps)
    w = conv.weight.detach().double().numpy() * gain[:, None, None, None]
    b = norm.bias.detach().double().numpy() - norm.running_mean.double().numpy() * gain
    wq, sw = _symmetric_int8(w)
    bias = _round_bias(b / (scale_in * sw), "conv")
    pairs = [requant_multiplier(scale_in * s / scale_out) for s in sw]
    mult = np.array([m for m, _ in pairs], dtype=np.int32)
    shift = np.array([s for _, s in pairs], dtype=np.int32)
    return ConvLayer(wq, bias, mult, shift)


def requant_multiplier(real: float) -> tuple[int, int]:
    """(mult, shift) with mult in [2^30, 2^31) and real ~= mult * 2^-shift; (0, 1) for 0."""
    if not real >= 0 or math.isinf(real):
        raise ValueError(f"a requantisation multiplier must be finite and >= 0, not {real}")
    if real == 0:
        return 0, 1
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    mult, shift = round(mantissa * (1 << 31)), 31 - exponent
    if mult == 1 << 31:
        mult, shift = mult >> 1, shift - 1
    if shift > 62:  # below 2^-32: no int32 accumulator reaches one output step
        return 0, 1
    if shift < 1:
        raise ValueError(f"requantisation multiplier {real} is too large (needs a shift below 1)")
    return mult, shift
