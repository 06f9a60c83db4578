"""The baseline schemes: the networks, their MAC counts, payloads, checkpoints, serving and training."""

from __future__ import annotations

import io
import random
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from agilenn.baselines.checkpoint import BaselineCheckpoint
from agilenn.baselines.models import FullCNN, TinyCNN, baseline_payloads, count_macs
from agilenn.baselines.training import classifier_accuracy, train_classifier
from agilenn.codec import ZstdFrames
from agilenn.data import load_mnist_sample
from agilenn.errors import CheckpointError, CodecError
from agilenn.pretrained import load_baseline, load_pretrained
from server_node.remote import RemoteServer
from server_node.served import ServedBaseline, load_served_model
from transports.messages import ErrorReply, InferReply, InferRequest, Message, MessageType

from .fakes import ask

SAMPLE = load_mnist_sample()
FULL = load_baseline("mnist-full-cnn")
FULL_MODEL = FULL.build_model()
assert isinstance(FULL_MODEL, FullCNN)
FULL_HASH = bytes.fromhex(FULL.model_hash)
PAYLOADS = baseline_payloads(FULL_MODEL, FULL.raw_dictionary)
PLAIN_PAYLOADS = baseline_payloads(FULL_MODEL, b"")
FRAMES = ZstdFrames(9)
FAST = settings(deadline=None, database=None, derandomize=True)


def _image(index: int) -> np.ndarray:
    return SAMPLE.images[index]


def _input(index: int) -> torch.Tensor:
    images, _ = SAMPLE.batch(slice(index, index + 1))
    return images


def _activation(index: int, split: int) -> np.ndarray:
    with torch.no_grad():
        return FULL_MODEL.head(split)(_input(index))[0].numpy()


def _split8(split: int, step: float, levels: bytes) -> bytes:
    return b"S" + struct.pack("<Bf", split, step) + FRAMES.compress(levels)


def _jpeg_file(size: tuple[int, int], mode: str = "L", fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=128 if mode == "L" else (10, 20, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real 28x28 JPEG whose frame header (SOF0) is edited to declare another size."""
    data = bytearray(_jpeg_file((28, 28)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# ------------------------------------------------------------------ count_macs
def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, stride=2, padding=1),  # (2, 8, 8) -> (6, 4, 4)
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3),  # (6, 4, 4) -> (6, 4, 4), 2 input channels a group
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


def test_count_macs_matches_a_hand_count() -> None:
    net = _tiny_net()
    example = torch.rand(3, 2, 8, 8)  # a batch: only one example is counted
    conv1 = (6 * 4 * 4) * (3 * 3 * 2)
    conv2 = (6 * 4 * 4) * (3 * 3 * 2)
    linear = 96 * 5
    assert count_macs(net, example) == conv1 + conv2 + linear == 3936


def test_count_macs_counts_only_the_layers_that_run_and_removes_its_hooks() -> None:
    net = _tiny_net()
    example = torch.rand(1, 2, 8, 8)
    assert count_macs(net, example, net[0]) == 6 * 4 * 4 * 3 * 3 * 2
    assert count_macs(net, example, lambda x: net[2](net[0](x))) == 2 * 1728
    assert all(not layer._forward_hooks for layer in net.modules())
    before = net(example)
    assert torch.equal(net(example), before)


def test_count_macs_of_the_full_cnn_is_its_conv_and_linear_work() -> None:
    w = 16
    expected = (w * 28 * 28 * 9 * 1 + w * 28 * 28 * 9 * w + 2 * w * 14 * 14 * 9 * w
                + 2 * w * 14 * 14 * 9 * 2 * w + 4 * w * 7 * 7 * 9 * 2 * w + 4 * w * 10)
    assert count_macs(FULL_MODEL, _input(0)) == expected
    assert FULL.metadata["macs"] == expected  # what the shipped file claims is what it costs


def test_tiny_cnn_fits_within_the_agilenn_device_part() -> None:
    agilenn = load_pretrained("mnist").build_model()
    x = _input(0)
    device_macs = count_macs(agilenn, x, agilenn.device_forward)
    device_params = sum(p.numel() for part in (agilenn.extractor, agilenn.local_predictor)
                        for p in part.parameters())
    tiny = load_baseline("mnist-tiny-cnn").build_model()
    assert isinstance(tiny, TinyCNN)
    assert 0 < count_macs(tiny, x) <= device_macs
    assert 0 < sum(p.numel() for p in tiny.parameters()) <= device_params
    # and the device part is far cheaper than the network the offloading baselines run
    assert device_macs < count_macs(FULL_MODEL, x) / 10


# --------------------------------------------------------------------- FullCNN
def test_full_cnn_split_points_are_the_interior_cuts() -> None:
    assert list(FullCNN().split_points) == list(range(1, len(FullCNN().blocks)))
    assert list(FULL_MODEL.split_points) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("trained", [False, True], ids=["random-weights", "shipped"])
def test_tail_after_head_is_the_whole_network_at_every_split(trained: bool) -> None:
    model = FULL_MODEL if trained else FullCNN().eval()
    assert isinstance(model, FullCNN)
    x, _ = SAMPLE.batch(slice(0, 16))
    with torch.no_grad():
        whole = model(x)
        for split in model.split_points:
            assert torch.allclose(model.tail(split)(model.head(split)(x)), whole, atol=1e-5), split
        assert torch.allclose(model.tail(0)(x), whole) and torch.equal(model.head(0)(x), x)


# -------------------------------------------------------------------- payloads
def test_raw_payload_is_lossless() -> None:
    for index in range(20):
        image = _image(index)
        split, decoded = PAYLOADS.decode(PAYLOADS.encode_raw(image))
        assert split == 0 and decoded.dtype == np.float32 and decoded.shape == (1, 28, 28)
        assert np.array_equal(decoded, image.astype(np.float32) / 255.0)
        assert np.array_equal(np.rint(decoded * 255).astype(np.uint8), image)


def test_raw_payload_with_the_shipped_dictionary_is_smaller() -> None:
    assert len(FULL.raw_dictionary) > 0
    images = SAMPLE.images[:200]
    with_dictionary = np.mean([len(PAYLOADS.encode_raw(image)) for image in images])
    without = np.mean([len(PLAIN_PAYLOADS.encode_raw(image)) for image in images])
    assert with_dictionary < without
    assert with_dictionary < 28 * 28  # and both compress the image at all
    # the dictionary is needed to read them: a decoder without it refuses them
    for image in images[:5]:
        with pytest.raises(CodecError, match="zstd"):
            PLAIN_PAYLOADS.decode(PAYLOADS.encode_raw(image))


def test_jpeg_payload_is_close_and_smaller_at_low_quality() -> None:
    for index in range(20):
        image = _image(index)
        reference = image.astype(np.float32) / 255.0
        fine, coarse = PAYLOADS.encode_jpeg(image, 95), PAYLOADS.encode_jpeg(image, 10)
        assert fine[:1] == coarse[:1] == b"J"
        split, decoded = PAYLOADS.decode(fine)
        assert split == 0 and decoded.dtype == np.float32 and decoded.shape == (1, 28, 28)
        assert float(np.abs(decoded - reference).mean()) < 0.01
        assert 0.0 <= decoded.min() and decoded.max() <= 1.0
        assert len(coarse) < len(fine)
        _, rough = PAYLOADS.decode(coarse)
        assert np.abs(rough - reference).mean() > np.abs(decoded - reference).mean()


def test_jpeg_payload_keeps_the_class() -> None:
    images, labels = SAMPLE.batch(slice(0, 100))
    decoded = np.stack([PAYLOADS.decode(PAYLOADS.encode_jpeg(image, 50))[1] for image in SAMPLE.images[:100]])
    with torch.no_grad():
        predicted = FULL_MODEL(torch.from_numpy(decoded)).argmax(1)
    assert (predicted == labels).float().mean() >= 0.97


@pytest.mark.parametrize("split", [1, 2, 3, 4, 5])
def test_split8_reconstructs_within_half_a_step(split: int) -> None:
    for index in range(5):
        activation = _activation(index, split)
        payload = PAYLOADS.encode_split8(activation, split)
        assert payload[:2] == b"S" + bytes([split])
        decoded_split, decoded = PAYLOADS.decode(payload)
        assert decoded_split == split and decoded.dtype == np.float32
        assert decoded.shape == activation.shape == PAYLOADS.split_shapes[split]
        step = float(activation.max()) / 255.0
        assert step > 0
        assert float(np.abs(decoded - activation).max()) <= step / 2 * (1 + 1e-4)
        # the tail on the reconstruction gives the class of the whole network
        with torch.no_grad():
            tail = FULL_MODEL.tail(split)(torch.from_numpy(decoded)[None])
        assert int(tail.argmax()) == int(SAMPLE.labels[index])


def test_split8_of_an_all_zero_activation_decodes_to_zeros() -> None:
    activation = np.zeros(PAYLOADS.split_shapes[4], np.float32)
    split, decoded = PAYLOADS.decode(PAYLOADS.encode_split8(activation, 4))
    assert split == 4 and np.array_equal(decoded, activation)


def test_encoders_refuse_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="uint8 image"):
        PAYLOADS.encode_raw(_image(0).astype(np.float32))
    with pytest.raises(ValueError, match="uint8 image"):
        PAYLOADS.encode_jpeg(np.zeros((1, 32, 32), np.uint8), 90)
    with pytest.raises(ValueError, match="split 3"):
        PAYLOADS.encode_split8(_activation(0, 2), 3)
    with pytest.raises(ValueError, match="split 0"):
        PAYLOADS.encode_split8(_activation(0, 1), 0)


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


RAW0 = PAYLOADS.encode_raw(_image(0))
SPLIT5 = PAYLOADS.encode_split8(_activation(0, 5), 5)
BAD_PAYLOADS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "empty"),
    "unknown-tag": (b"X" + RAW0[1:], "tag 0x58"),
    "lowercase-tag": (b"r" + RAW0[1:], "tag 0x72"),
    "raw-no-body": (b"R", "zstd"),
    "raw-truncated": (RAW0[: len(RAW0) // 2], "zstd"),
    "raw-one-byte-short": (RAW0[:-1], "zstd"),
    "raw-corrupt": (_corrupt(RAW0), "zstd"),
    "raw-too-small": (b"R" + FRAMES.compress(bytes(28 * 28 - 1)), "783 bytes"),
    "raw-too-big": (b"R" + FRAMES.compress(bytes(32 * 32)), "zstd"),
    "raw-of-rgb": (b"R" + FRAMES.compress(bytes(3 * 28 * 28)), "zstd"),
    "jpeg-32x32": (b"J" + _jpeg_file((32, 32)), "32x32"),
    "jpeg-28x27": (b"J" + _jpeg_file((28, 27)), "28x27"),
    "jpeg-garbage": (b"J" + b"this is not a jpeg at all", "not a readable JPEG"),
    "jpeg-empty": (b"J", "not a readable JPEG"),
    "jpeg-truncated": (PAYLOADS.encode_jpeg(_image(0), 90)[:150], "not a readable JPEG"),
    "png-not-jpeg": (b"J" + _jpeg_file((28, 28), fmt="PNG"), "not a readable JPEG"),
    "split-header-short": (b"S\x05\x00\x00", "shorter than its header"),
    "split-0": (_split8(0, 0.1, bytes(28 * 28)), "split 0 is not a split point"),
    "split-6": (_split8(6, 0.1, bytes(10)), "split 6 is not a split point"),
    "split-255": (_split8(255, 0.1, bytes(64)), "split 255 is not a split point"),
    "step-nan": (_split8(5, float("nan"), bytes(64)), "step nan"),
    "step-inf": (_split8(5, float("inf"), bytes(64)), "step inf"),
    "step-negative": (_split8(5, -0.5, bytes(64)), "step -0.5"),
    "step-zero": (_split8(5, 0.0, bytes(64)), "step 0.0"),
    "step-negative-zero": (_split8(5, -0.0, bytes(64)), "not a positive"),
    "split8-frame-too-small": (_split8(5, 0.1, bytes(63)), "63 bytes"),
    "split8-frame-too-big": (_split8(5, 0.1, bytes(65)), "zstd"),
    "split8-frame-of-another-split": (_split8(5, 0.1, bytes(32 * 7 * 7)), "zstd"),
    "split8-no-frame": (SPLIT5[:6], "zstd"),
    "split8-truncated": (SPLIT5[:-2], "zstd"),
}


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_decode_refuses_bad_payloads_with_a_reason(name: str) -> None:
    payload, reason = BAD_PAYLOADS[name]
    with pytest.raises(CodecError, match=reason) as info:
        PAYLOADS.decode(payload)
    assert str(info.value)


def test_decode_refuses_a_jpeg_declaring_a_huge_image() -> None:
    # 65000x65000 is beyond Pillow's decompression-bomb limit, so Image.open
    # itself raises PIL.Image.DecompressionBombError: it must still be a CodecError.
    with pytest.raises(CodecError):
        PAYLOADS.decode(b"J" + _jpeg_declaring(65000, 65000))


def test_decode_refuses_a_split8_step_whose_levels_overflow_float32() -> None:
    # A finite step that no encoder produces (255 * step > float32 max) would
    # give infinite activations and NaN logits; decode must refuse it.
    payload = _split8(5, 3e38, bytes([255]) * 64)
    with np.errstate(over="ignore"):  # numpy's overflow warning aside, this is what production sees
        try:
            _, decoded = PAYLOADS.decode(payload)
        except CodecError as exc:
            assert str(exc)
            return
    pytest.fail(f"decode accepted step 3e38: {int(np.isinf(decoded).sum())} of {decoded.size} "
                "activations are infinite")


_TAGGED = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from([b"R", b"J", b"S"]), st.binary(max_size=300)).map(b"".join),
    st.tuples(st.integers(0, 7), st.floats(width=32), st.binary(max_size=80)).map(
        lambda t: b"S" + struct.pack("<Bf", t[0], t[1]) + t[2]),
    st.tuples(st.integers(0, len(RAW0) - 1), st.binary(min_size=1, max_size=4)).map(
        lambda t: RAW0[: t[0]] + t[1] + RAW0[t[0] + len(t[1]) :]),
)


@settings(FAST, max_examples=300)
@given(_TAGGED)
def test_arbitrary_bytes_raise_nothing_but_codec_error(payload: bytes) -> None:
    try:
        split, decoded = PAYLOADS.decode(payload)
    except CodecError as exc:
        assert str(exc)
        return
    # whatever decodes is a well-formed input for the tail at that split
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
    assert decoded.shape == ((1, 28, 28) if split == 0 else PAYLOADS.split_shapes[split])


# ------------------------------------------------------------------ checkpoint
def test_checkpoint_round_trip_keeps_everything_and_the_hash() -> None:
    data = FULL.to_bytes()
    again = BaselineCheckpoint.from_bytes(data)
    assert again.model_hash == FULL.model_hash and len(FULL.model_hash) == 16
    assert (again.arch, again.arch_kwargs, again.raw_dictionary, again.metadata) == (
        FULL.arch, FULL.arch_kwargs, FULL.raw_dictionary, FULL.metadata)
    assert list(again.state_dict) == list(FULL.state_dict)
    assert all(torch.equal(again.state_dict[k], FULL.state_dict[k]) for k in FULL.state_dict)
    assert BaselineCheckpoint.from_bytes(again.to_bytes()).model_hash == FULL.model_hash


def test_checkpoint_from_a_fresh_model_round_trips_without_a_dictionary() -> None:
    model = TinyCNN(width=4)
    checkpoint = BaselineCheckpoint.from_model("tiny-cnn", {"width": 4}, model, metadata={"note": "x"})
    again = BaselineCheckpoint.from_bytes(checkpoint.to_bytes())
    assert again.raw_dictionary == b"" and again.metadata == {"note": "x"}
    assert again.model_hash == checkpoint.model_hash
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.build_model()(x), model.eval()(x))


def test_model_hash_covers_weights_arch_and_dictionary() -> None:
    base = FULL.model_hash
    weights = {k: v.clone() for k, v in FULL.state_dict.items()}
    weights["blocks.5.bias"][0] += 1e-3
    assert BaselineCheckpoint(FULL.arch, FULL.arch_kwargs, weights, FULL.raw_dictionary).model_hash != base
    assert BaselineCheckpoint(FULL.arch, FULL.arch_kwargs, FULL.state_dict, b"").model_hash != base
    wider = BaselineCheckpoint(FULL.arch, {"width": 17}, FULL.state_dict, FULL.raw_dictionary)
    assert wider.model_hash != base
    assert BaselineCheckpoint(FULL.arch, FULL.arch_kwargs, FULL.state_dict, FULL.raw_dictionary,
                              {"other": 1}).model_hash == base  # metadata is not part of the model


def test_a_flipped_byte_in_the_weights_is_refused() -> None:
    data = FULL.to_bytes()
    weights = FULL.state_dict["blocks.5.weight"].numpy().tobytes()
    at = data.index(weights) + len(weights) // 2
    flipped = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    with pytest.raises(CheckpointError, match="does not match the stored"):
        BaselineCheckpoint.from_bytes(flipped)


def test_a_flipped_byte_anywhere_is_refused_or_harmless() -> None:
    data = FULL.to_bytes()
    rng = random.Random(1)
    refused = 0
    for _ in range(120):
        at = rng.randrange(len(data))
        flipped = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        try:
            loaded = BaselineCheckpoint.from_bytes(flipped)
        except CheckpointError:
            refused += 1
            continue
        # zip padding and the like: the same model, never a silently different one (the
        # metadata, which the hash does not cover, is free text such as the training time)
        assert loaded.model_hash == FULL.model_hash and loaded.raw_dictionary == FULL.raw_dictionary, at
        assert (loaded.arch, loaded.arch_kwargs) == (FULL.arch, FULL.arch_kwargs), at
        assert all(torch.equal(loaded.state_dict[k], FULL.state_dict[k]) for k in FULL.state_dict), at
    assert refused > 100


def _edited(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    edit(raw)
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


def _bump_weight(raw: dict[str, Any]) -> None:
    raw["state_dict"]["blocks.0.0.weight"].view(-1)[0] += 0.5


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "tensor": (_bump_weight, "does not match the stored"),
    "dictionary": (lambda raw: raw.__setitem__("raw_dictionary", raw["raw_dictionary"][:-1].clone()),
                   "does not match"),
    "arch-kwargs": (lambda raw: raw.__setitem__("arch_kwargs", {"width": 8}), "does not match"),
    "hash": (lambda raw: raw.__setitem__("model_hash", "0" * 16), "does not match the stored 0000"),
    "no-hash": (lambda raw: raw.pop("model_hash"), "does not match"),
    "float-kwarg": (lambda raw: raw.__setitem__("arch_kwargs", {"width": 16.0}), "integers"),
    "dictionary-not-uint8": (lambda raw: raw.__setitem__("raw_dictionary", torch.zeros(3)), "uint8"),
    "no-arch": (lambda raw: raw.pop("arch"), "invalid"),
    "format": (lambda raw: raw.__setitem__("format", "agilenn.checkpoint"), "format marker"),
    "version": (lambda raw: raw.__setitem__("format_version", 2), "version 2"),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_an_edited_checkpoint_is_refused(name: str) -> None:
    edit, reason = EDITS[name]
    with pytest.raises(CheckpointError, match=reason):
        BaselineCheckpoint.from_bytes(_edited(FULL.to_bytes(), edit))


@pytest.mark.parametrize("data", [b"", b"not a checkpoint", FULL.to_bytes()[:1000]],
                         ids=["empty", "text", "cut"])
def test_unreadable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CheckpointError, match="not a readable"):
        BaselineCheckpoint.from_bytes(data)


def test_build_model_refuses_an_unknown_arch_or_weights_that_do_not_fit() -> None:
    with pytest.raises(CheckpointError, match="unknown baseline arch"):
        BaselineCheckpoint("resnet", {}, FULL.state_dict).build_model()
    with pytest.raises(CheckpointError, match="do not fit"):
        BaselineCheckpoint("full-cnn", {"width": 8}, FULL.state_dict).build_model()


def test_shipped_baselines_load_and_classify_the_sample() -> None:
    assert FULL.arch == "full-cnn" and isinstance(FULL_MODEL, FullCNN) and not FULL_MODEL.training
    assert classifier_accuracy(FULL_MODEL, SAMPLE) >= 0.98
    tiny = load_baseline("mnist-tiny-cnn")
    assert tiny.arch == "tiny-cnn" and tiny.model_hash != FULL.model_hash
    assert classifier_accuracy(tiny.build_model(), SAMPLE) >= 0.9
    with pytest.raises(ValueError, match="no shipped baseline"):
        load_baseline("cifar-full-cnn")


# --------------------------------------------------------------------- serving
def _infer(request_id: int, payload: bytes, local_logits: np.ndarray | None = None) -> Message:
    return InferRequest(payload, local_logits).message(request_id, f"dev-{request_id}", FULL_HASH)


def _payload(kind: str, index: int) -> bytes:
    if kind == "raw":
        return PAYLOADS.encode_raw(_image(index))
    if kind == "jpeg":
        return PAYLOADS.encode_jpeg(_image(index), 75)
    split = int(kind.removeprefix("split"))
    return PAYLOADS.encode_split8(_activation(index, split), split)


def _expected_probabilities(payload: bytes) -> np.ndarray:
    split, decoded = PAYLOADS.decode(payload)
    with torch.no_grad():
        logits = FULL_MODEL.tail(split)(torch.from_numpy(decoded)[None])
    return torch.softmax(logits, 1)[0].numpy()


def _check_answer(reply: Message, request_id: int, payload: bytes, index: int) -> None:
    assert reply.type is MessageType.INFER_REPLY, reply.body
    assert reply.request_id == request_id and reply.model_hash == FULL_HASH
    answer = InferReply.parse(reply)
    assert answer.label == int(SAMPLE.labels[index]) and answer.probabilities is not None
    assert np.allclose(answer.probabilities, _expected_probabilities(payload), atol=2e-3)


def _error(reply: Message) -> ErrorReply:
    assert reply.type is MessageType.ERROR, reply
    return ErrorReply.parse(reply)


@pytest.fixture(scope="module")
def server() -> Iterator[RemoteServer]:
    with RemoteServer.in_memory("pretrained:mnist-full-cnn", max_batch_size=8,
                                max_queue_delay_us=2000) as running:
        yield running


KINDS = ["raw", "jpeg", "split1", "split3", "split5"]


@pytest.mark.parametrize("kind", KINDS)
def test_server_answers_each_payload_kind(server: RemoteServer, kind: str) -> None:
    for index in (0, 1, 2):
        request_id = 100 * KINDS.index(kind) + index
        payload = _payload(kind, index)
        _check_answer(ask(server, _infer(request_id, payload)), request_id, payload, index)


def test_server_batches_mixed_payload_kinds() -> None:
    jobs = [(i, kind, i % 7) for i, kind in enumerate(["raw", "jpeg", "split1", "split2", "split4", "split5",
                                                        "raw", "split5"])]
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[int, str, int]) -> Message:
        request_id, kind, index = job
        barrier.wait(timeout=10)
        return ask(running, _infer(request_id, _payload(kind, index)))

    with RemoteServer.in_memory("pretrained:mnist-full-cnn", max_batch_size=len(jobs),
                                max_queue_delay_us=300_000) as running:
        with ThreadPoolExecutor(len(jobs)) as pool:
            replies = list(pool.map(send, jobs))
    for (request_id, kind, index), reply in zip(jobs, replies, strict=True):
        _check_answer(reply, request_id, _payload(kind, index), index)
    assert max(InferReply.parse(reply).timings.batch for reply in replies) > 1  # some shared a batch


def test_served_baseline_runs_a_mixed_batch_like_single_requests() -> None:
    served = load_served_model("pretrained:mnist-full-cnn")
    assert isinstance(served, ServedBaseline) and served.model_hash == FULL_HASH
    kinds = ["split5", "raw", "split2", "jpeg", "split5"]
    payloads = [_payload(kind, index) for index, kind in enumerate(kinds)]
    prepared = [served.prepare(InferRequest(payload)) for payload in payloads]
    together = served.run(prepared)
    for item, payload, reply in zip(prepared, payloads, together, strict=True):
        alone = served.run([item])[0]
        assert reply.label == alone.label
        assert reply.probabilities is not None and alone.probabilities is not None
        assert np.allclose(reply.probabilities, alone.probabilities, atol=1e-3)
        assert np.allclose(reply.probabilities, _expected_probabilities(payload), atol=2e-3)
    assert [reply.label for reply in together] == [int(label) for label in SAMPLE.labels[:5]]


def test_server_refuses_local_logits(server: RemoteServer) -> None:
    reply = ask(server, _infer(900, _payload("raw", 0), np.zeros(10)))
    error = _error(reply)
    assert reply.request_id == 900 and error.code == "bad-payload" and "local logits" in error.reason


@pytest.mark.parametrize("name", ["raw-corrupt", "jpeg-32x32", "split-6", "step-nan", "unknown-tag"])
def test_server_answers_a_bad_payload_and_keeps_serving(server: RemoteServer, name: str) -> None:
    payload, _ = BAD_PAYLOADS[name]
    reply = ask(server, _infer(901, payload))
    error = _error(reply)
    assert reply.request_id == 901 and error.code == "bad-payload" and error.reason
    good = _payload("split4", 3)
    _check_answer(ask(server, _infer(902, good)), 902, good, 3)


def test_server_refuses_another_models_hash(server: RemoteServer) -> None:
    agilenn_hash = bytes.fromhex(load_pretrained("mnist").model_hash)
    error = _error(ask(server, _infer(903, _payload("raw", 0))._replace(model_hash=agilenn_hash)))
    assert error.code == "model-mismatch" and FULL.model_hash in error.reason


def test_server_survives_a_jpeg_declaring_a_huge_image() -> None:
    # Own server: with the bug this payload kills the serving thread.
    with RemoteServer.in_memory("pretrained:mnist-full-cnn", max_batch_size=1) as running:
        reply = ask(running, _infer(904, b"J" + _jpeg_declaring(65000, 65000)), timeout=2.0)
        assert _error(reply).code == "bad-payload"
        good = _payload("raw", 4)
        _check_answer(ask(running, _infer(905, good)), 905, good, 4)


def test_tiny_cnn_cannot_be_served() -> None:
    with pytest.raises(CheckpointError, match="only a full-cnn can be served"):
        load_served_model("pretrained:mnist-tiny-cnn")
    server = RemoteServer(model="pretrained:mnist-tiny-cnn")
    with pytest.raises(CheckpointError, match="tiny-cnn"):
        server.start()


# -------------------------------------------------------------------- training
def _sample_loss(model: nn.Module) -> float:
    images, labels = SAMPLE.batch(slice(0, len(SAMPLE)))
    with torch.no_grad():
        return float(F.cross_entropy(model(images), labels))


def test_a_few_training_steps_reduce_the_loss_and_improve_accuracy() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    loss_before, accuracy_before = _sample_loss(model), classifier_accuracy(model, SAMPLE)
    steps = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal steps
        steps += module.training

    handle = model.register_forward_hook(count)
    trained = train_classifier(model, SAMPLE, epochs=50, max_steps=20, lr=3e-2, batch_size=64)
    handle.remove()
    assert trained is model and not model.training
    assert steps == 20  # max_steps caps the 50 epochs
    loss_after, accuracy_after = _sample_loss(model), classifier_accuracy(model, SAMPLE)
    assert loss_after < loss_before - 0.1
    assert accuracy_after > accuracy_before + 0.05


def test_training_is_deterministic_for_a_seed() -> None:
    first, second = TinyCNN(width=4), TinyCNN(width=4)
    second.load_state_dict(first.state_dict())
    for model in (first, second):
        train_classifier(model, SAMPLE, epochs=1, max_steps=3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))
    assert not torch.equal(first.head.weight, TinyCNN(width=4).head.weight)


def test_classifier_accuracy_counts_correct_predictions() -> None:
    class Oracle(nn.Module):
        """Predicts label 7 always: accuracy is the share of sevens."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.full((x.shape[0],), 7), 10).float()

    expected = float((SAMPLE.labels == 7).mean())
    assert classifier_accuracy(Oracle(), SAMPLE, batch_size=300) == pytest.approx(expected)
    assert 0.05 < expected < 0.2


def test_build_model_refuses_arch_arguments_the_arch_does_not_take() -> None:
    """Review finding: a TypeError escaped instead of a CheckpointError."""
    checkpoint = load_baseline("mnist-tiny-cnn")
    checkpoint.arch_kwargs = {"width": 11, "depth": 3}
    with pytest.raises(CheckpointError, match="does not take"):
        checkpoint.build_model()
