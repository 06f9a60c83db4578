"""Split learning through a real server: the exchange, its safety on resends, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agilenn.adapt.adapter import AdaptConfig, adapt
from agilenn.adapt.split import SERVER_TRAINED
from agilenn.data import ImageDataset, load_mnist_sample
from agilenn.data.mnist_c import corrupt
from agilenn.pretrained import load_checkpoint
from edge_node.client import EdgeClient
from edge_node.split_learning import SplitLearningError, WireSplitServer, server_pseudo_labels
from server_node.remote import RemoteServer
from tests.fakes import ask
from transports.messages import (
    AdaptFetch,
    AdaptGradient,
    AdaptState,
    AdaptStep,
    ErrorReply,
    InferReply,
    InferRequest,
    Message,
    MessageType,
    encode_unchecked,
)

CHECKPOINT = load_checkpoint("pretrained:mnist")
MODEL = CHECKPOINT.build_model()
HASH = bytes.fromhex(CHECKPOINT.model_hash)
SAMPLE = load_mnist_sample()
SHIFTED = ImageDataset("mnist-sample:rotate", corrupt(SAMPLE.images[:64], "rotate", 0), SAMPLE.labels[:64],
                       10)


def _batch(count: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = SHIFTED.batch(slice(0, count))
    with torch.no_grad():
        features = MODEL.extractor(images)
        local_logits = MODEL.local_predictor(features[:, :MODEL.config.local_channels])
    return features.numpy(), local_logits.numpy(), labels.numpy()


def _step(step: int, session: str = "s1", train: bool = True, **changes: object) -> AdaptStep:
    features, local_logits, labels = _batch()
    fields = dict(session=session, step=step, train=train, features=features, local_logits=local_logits,
                  labels=labels, lr=3e-3)
    fields.update(changes)
    return AdaptStep(**fields)  # type: ignore[arg-type]


def _error_code(reply: Message) -> str:
    assert reply.type is MessageType.ERROR, reply
    return ErrorReply.parse(reply).code


def _server_state(server: RemoteServer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in server.server.served.model.state_dict().items()}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server() -> RemoteServer:
    with RemoteServer(adapt_sessions=2) as running:
        yield running


def test_split_learning_over_zeromq_matches_the_in_process_exchange(server: RemoteServer) -> None:
    # Plain SGD: its steps are linear in the gradients, so float16's error shows as it is
    # (Adam's normalisation turns the sign of a near-zero gradient into a whole step).
    config = AdaptConfig(method="full", epochs=2, lr=0.01, optimizer="sgd")
    served_before = _server_state(server)
    with WireSplitServer(server.connect(), CHECKPOINT.model_hash, config.lr, "sgd", "test-split") as wire:
        over_wire = adapt(MODEL, SHIFTED, config, server=wire)
    in_process = adapt(MODEL, SHIFTED, config)
    wired, local = over_wire.model.state_dict(), in_process.model.state_dict()
    original = MODEL.state_dict()
    for name in original:
        moved = float((local[name].float() - original[name].float()).norm())
        apart = float((wired[name].float() - local[name].float()).norm())
        # float16 on the wire: the two runs agree far more closely than either moved.
        assert apart <= 0.01 * moved + 1e-6, (name, apart, moved)
    assert any(not torch.equal(wired[name], original[name]) for name in wired
               if name.split(".", 1)[0] in SERVER_TRAINED)  # the server's half adapted, and came back
    # Two epochs of 64 in batches of 32: four steps of ~2 KB a sample each way, then the state.
    assert over_wire.bytes_exchanged > 4 * 32 * 2 * 1960 + 400_000
    served_after = _server_state(server)
    assert all(torch.equal(served_before[name], served_after[name]) for name in served_before)


def test_a_resent_step_is_answered_again_and_not_applied_twice(server: RemoteServer) -> None:
    first = ask(server, _step(0, "resend").message(1, "dev-a", HASH))
    again = ask(server, _step(0, "resend").message(2, "dev-a", HASH))
    fresh = ask(server, _step(0, "other").message(3, "dev-a", HASH))
    gradients = [AdaptGradient.parse(reply) for reply in (first, again, fresh)]
    assert np.array_equal(gradients[0].features, gradients[1].features)
    assert gradients[0].loss == gradients[1].loss == gradients[2].loss
    # One step applied in each session: their states are the same.
    states = []
    for session, request_id in (("resend", 4), ("other", 5)):
        reply = AdaptState.parse(ask(server, AdaptFetch(session, 0).message(request_id, "dev-a", HASH)))
        states.append(reply.data)
        assert reply.offset == 0 and reply.total > len(reply.data) > 0
    assert states[0] == states[1]
    assert _error_code(ask(server, _step(1, "resend").message(6, "dev-a", HASH))) == "bad-step"


@pytest.mark.parametrize("request_message, code", [
    (_step(0, features=np.zeros(17, dtype=np.float32)).message(10, "dev-b", HASH), "bad-payload"),
    (_step(0, labels=np.array([1, 2, 3, 10])).message(11, "dev-b", HASH), "bad-payload"),
    (_step(0, optimizer="lbfgs").message(12, "dev-b", HASH), "bad-payload"),
    (_step(3, "never-opened").message(13, "dev-b", HASH), "unknown-session"),
    (AdaptFetch("never-opened", 0).message(14, "dev-b", HASH), "unknown-session"),
    (_step(0).message(15, "dev-b", bytes(8)), "model-mismatch"),
])
def test_bad_adaptation_requests_get_a_reason_and_the_server_keeps_serving(
        server: RemoteServer, request_message: Message, code: str) -> None:
    assert _error_code(ask(server, request_message)) == code
    symbols = MODEL.device_forward(SHIFTED.batch(slice(0, 1))[0]).symbols[0].numpy()
    from agilenn.codec import FeatureCodec

    payload = FeatureCodec(CHECKPOINT.codec).encode(symbols)
    reply = ask(server, InferRequest(payload).message(99, "dev-b", HASH))
    assert InferReply.parse(reply).label >= 0


def test_nan_features_are_refused_by_the_schema(server: RemoteServer) -> None:
    message = _step(0).message(20, "dev-c", HASH)
    body = dict(message.body)
    body["f"] = b"\x00\x7e" + body["f"][2:]  # float16 NaN
    assert _error_code(ask(server, encode_unchecked(message._replace(body=body)), 20)) == "non-finite"


def test_a_fetch_beyond_the_state_and_too_many_sessions_are_refused() -> None:
    with RemoteServer(adapt_sessions=1) as small:
        assert AdaptGradient.parse(ask(small, _step(0, "one").message(1, "dev-d", HASH))).loss >= 0
        assert _error_code(ask(small, _step(0, "two").message(2, "dev-d", HASH))) == "busy"
        assert _error_code(ask(small, AdaptFetch("one", 10**9).message(3, "dev-d", HASH))) == "bad-offset"
        offset = 0
        while True:  # fetched whole, the session gives way to a new one
            piece = AdaptState.parse(ask(small, AdaptFetch("one", offset).message(4, "dev-d", HASH)))
            offset += len(piece.data)
            if offset == piece.total:
                break
        assert AdaptGradient.parse(ask(small, _step(0, "two").message(5, "dev-d", HASH))).loss >= 0


def test_a_baseline_server_or_a_closed_one_refuses_adaptation() -> None:
    with RemoteServer("pretrained:mnist-full-cnn") as baseline:
        assert _error_code(ask(baseline, _step(0).message(1, "dev-e", HASH))) == "model-mismatch"
        ours = baseline.server.model_hash
        assert _error_code(ask(baseline, _step(0).message(2, "dev-e", ours))) == "unsupported"
    with RemoteServer(adapt_sessions=0) as closed:
        assert _error_code(ask(closed, _step(0).message(1, "dev-e", HASH))) == "unsupported"


def test_the_wire_server_raises_the_servers_reason(server: RemoteServer) -> None:
    with WireSplitServer(server.connect(), "00" * 8, 3e-3, device_id="test-mismatch") as wire, \
            pytest.raises(SplitLearningError, match="model-mismatch"):
        adapt(MODEL, SHIFTED, AdaptConfig(method="last", epochs=1), server=wire)


def test_pseudo_labels_come_from_the_servers_confident_answers(server: RemoteServer) -> None:
    with EdgeClient(server=server.endpoint, merge="server", timeout_s=5.0) as client:
        labelled = server_pseudo_labels(client, SHIFTED.head(40), threshold=0.9)
    assert 0 < len(labelled) <= 40
    with torch.no_grad():
        images = torch.from_numpy(labelled.images).float() / 255.0
        expected = MODEL(images).logits.argmax(1).numpy()
    assert np.array_equal(labelled.labels, expected)  # the server's classes, not the user's labels


def test_with_the_remote_channels_fixed_nothing_the_server_reads_moves() -> None:
    result = adapt(MODEL, SHIFTED, AdaptConfig(method="full", epochs=2, remote="fixed"))
    before, after = MODEL.state_dict(), result.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= {name for name in before
                                   if name.startswith(("local_predictor.", "extractor.pointwise."))}
    assert result.bytes_exchanged == 0
    images = SHIFTED.batch(slice(0, 16))[0]
    with torch.no_grad():
        k = MODEL.config.local_channels
        assert torch.equal(MODEL.extractor(images)[:, k:], result.model.extractor(images)[:, k:])
        assert not torch.equal(MODEL.extractor(images)[:, :k], result.model.extractor(images)[:, :k])
