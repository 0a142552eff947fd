"""The codec on its own: round trips, and every malformed input is a ProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distrib import DistribError, ProtocolError
from distrib.wire import _codec
from distrib.wire import _messages as m
from distrib.wire._limits import MAX_HEADER_BYTES

SAMPLES: list[m.Message] = [
    m.Hello(1, "id", "main", "3.11", 42, True, ["main.py", "-v"], {"SCALE": "2"}, b"\x90",
            1 << 29, ["numpy", "tasks"], 1 << 31),
    m.Welcome(1, "wid", "w", "linux-x86_64", "3.11", 4, 7, ["3.11", "3.12"], "", 1 << 29),
    m.WorkerState("draining", 2, 0, ""),
    m.WorkerState("paused", 1, 300 << 20, "outside its lending hours (Sat-Sun)"),
    m.Warmed("ab" * 32, 4, ""),
    m.Call(7, 1, "leaf", ["*"], 1, 3, None, [], frames=(b"call",)),
    m.ChildResult(7, 1, "ok", {}, frames=(b"result",)),
    m.ChildResult(7, 2, "error", {"type": "builtins.ValueError"}, frames=(b"error",)),
    m.CancelChild(7, 1),
    m.Peers([["10.0.0.2:7070", "k" * 40, "w2", 4], ["10.0.0.3:7070", "", "w3", 2]]),
    m.Placed(7, 3, "leaf", "w2"),
    m.Hello(1, "id", "w1 for main", "3.11", 43, False, [], {}, b"\x90", 1 << 29, [], 0,
            [], "ab" * 32, 0, "direct", "id"),
    m.Waiting([3], [7], False),
    m.Warmed("ab" * 32, 0, "other executors hold every slot it may use"),
    m.EnvProgress("building environment: numpy 2.1.3 (Python 3.11)"),
    m.Refused(m.RefusalCode.UNKNOWN_PEER, "no"),
    m.Goodbye(),
    m.Heartbeat(),
    m.Ping(12.5),
    m.Pong(12.5),
    m.Submit([m.TaskSpec(1, "d", 1, None, 0, [], 2), m.TaskSpec(2, "d", 2, 1.5, 1, [b"in"], 1),
              m.TaskSpec(3, "d", 1, None, 0, [b"only", b"inline"], 0)],
             frames=(b"a", b"b", b"c")),
    m.Cancel([1, 2]),
    m.Revoke([3, 4]),
    m.Revoked([3], [4]),
    m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 1),
               m.ResultSpec(2, m.Outcome.ERROR, {"type": "E"}, [b"x"], 0)],
              frames=(b"r",)),
    m.Output(1, 2, "text"),
    m.NeedManifest("d"),
    m.Manifest("d", frames=(b"manifest",)),
    m.NeedBlobs("d", ["h1", "h2"]),
    m.Blobs("d", ["h1"], frames=(b"z",)),
    m.DistFailed("d", "why"),
    m.Submit([m.TaskSpec(4, "d", 1, None, 0, [b"call"], 0, {"ab" * 16: 10, "cd" * 16: 0})]),
    m.Submit([m.TaskSpec(5, "d", 1, None, 0, [b"call", b""], 0, {}, {"distrib-12-ab3": 1})]),
    m.Results([m.ResultSpec(5, m.Outcome.OK, {}, [b"r", b""], 0, {"distrib-12-cd": 1})]),
    m.NeedObjects(["ab" * 16]),
    m.Objects(["ab" * 16, "cd" * 16], [2, 1], frames=(b"h", b"buf", b"h2")),
    m.Objects(["ab" * 16], [0], ["distrib-42-0123456789abcdef"]),
    m.ObjectsFailed(["ab" * 16], "gone"),
    m.StatusRequest(),
    m.Dial(m.PROTOCOL_VERSION, "ab" * 16, "w"),
    m.Status({"name": "w", "slots": 2}),
    m.Carry(frames=(b"piece",)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(message: m.Message) -> None:
    frames = _codec.encode(message)
    decoded = _codec.decode(frames)
    assert decoded == message
    assert [bytes(f) for f in decoded.frames] == [bytes(f) for f in message.frames]


def test_every_message_type_is_sampled() -> None:
    assert {type(x) for x in SAMPLES} == set(m.ALL_MESSAGES)


@pytest.mark.parametrize("frames,why", [
    ([], "empty"),
    ([b"\xc1"], "not valid msgpack"),
    ([msgpack.packb({"a": 1})], "non-empty list"),
    ([msgpack.packb([999])], "unknown message type"),
    ([msgpack.packb([m.Refused.TAG])], "expected 2 fields"),
    ([msgpack.packb([m.Refused.TAG, "unknown_peer", 5])], "expected str"),
    ([msgpack.packb([m.Refused.TAG, "nonsense", "x"])], "Refused: unknown code .nonsense."),
    ([msgpack.packb([m.Welcome.TAG, 1, "w", "n", "p", "3.11", True, 1, [], "", 1, False, 0])],
     "expected int"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [], 1, {}, {}, 0]]])], "expected 1 payload frames"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 0, None, 0, [], 1, {}, {}, 0]]]), b"x"], "at least one thread"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [], 0, {}, {}, 0]]])], "needs a payload"),
    ([msgpack.packb([m.Results.TAG, [[1, "weird", {}, [], 0, {}]]])], "Results: invalid enum value 'weird' .field results"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [b"c"], 0, {"../etc": 1}, {}, 0]]])],
     "bad shared objects"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [b"c"], 0, {"ab" * 16: -1}, {}, 0]]])],
     "bad shared objects"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [b"c"], 0, {}, {"/etc/passwd": 0}, 0]]])],
     "bad shared-memory frames"),
    ([msgpack.packb([m.Submit.TAG, [[1, "d", 1, None, 0, [b"c"], 0, {}, {"distrib-1-a": 1}, 0]]])],
     "bad shared-memory frames"),
    ([msgpack.packb([m.Results.TAG, [[1, "ok", {}, [b""], 0, {"distrib-1-a": 3}]]])],
     "bad shared-memory frames"),
    ([msgpack.packb([m.Objects.TAG, ["ab" * 16], [1, 1], []]), b"x"],
     "one positive frame count"),
    ([msgpack.packb([m.Objects.TAG, ["ab" * 16], [0], []])], "one positive frame count"),
    ([msgpack.packb([m.Objects.TAG, ["x" * 32], [1], []]), b"x"], "bad shared objects"),
    ([msgpack.packb([m.Objects.TAG, ["ab" * 16], [2], []]), b"x"], "expected 2 payload frames"),
    ([msgpack.packb([m.Objects.TAG, ["ab" * 16], [1], ["distrib-1-ab"]]), b"x"],
     "0 and the name of its file"),
    ([msgpack.packb([m.Objects.TAG, ["ab" * 16], [0], ["../etc/passwd"]])],
     "0 and the name of its file"),
    ([msgpack.packb([m.Manifest.TAG, "d"])], "expected 1 payload frames"),
    ([msgpack.packb([m.Blobs.TAG, "d", ["a", "b"]]), b"x"], "expected 2 payload frames"),
    ([msgpack.packb([m.Refused.TAG, "x"])[:-1]], "not valid msgpack"),
    ([b"\x00" * (MAX_HEADER_BYTES + 1)], "exceeds"),
])
def test_malformed_input_is_a_protocol_error(frames: list[bytes], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        _codec.decode(frames)


def test_protocol_error_is_a_distrib_error() -> None:
    assert issubclass(ProtocolError, DistribError)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_random_bytes_raise_only_protocol_error(frames: list[bytes]) -> None:
    try:
        _codec.decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([c.TAG for c in m.ALL_MESSAGES]),
       st.lists(_msgpack_values, max_size=6), st.lists(st.binary(max_size=8), max_size=3))
@pytest.mark.long
def test_well_formed_msgpack_with_wrong_fields_raises_only_protocol_error(
        tag: int, fields: list[object], payload: list[bytes]) -> None:
    try:
        message = _codec.decode([msgpack.packb([tag, *fields]), *payload])
    except ProtocolError:
        return
    assert message.TAG == tag  # what decodes is a valid message of that type


def test_libzmq_handshake_error_codes_are_named() -> None:
    import zmq

    from distrib.worker._gate import describe_handshake_error

    text = describe_handshake_error(zmq.PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND)
    assert text == "protocol error: zmtp unexpected command"
    assert "Unknown error" not in describe_handshake_error(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)


def test_a_batch_is_cut_by_count_and_by_bytes() -> None:
    from distrib.wire._limits import batches

    sizes = [3, 3, 3, 10, 1, 1, 1, 1]
    assert list(batches(sizes, lambda n: n, max_bytes=6, max_count=3)) == [
        [3, 3], [3], [10], [1, 1, 1], [1]]
    assert list(batches([], lambda n: n)) == []


def test_frames_over_the_receivers_limit_travel_in_pieces_and_join_back() -> None:
    big, small = bytes(range(256)) * 40, b"tiny"  # 10,240 bytes
    message = m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 2),
                         m.ResultSpec(2, m.Outcome.OK, {}, [], 1)], frames=(big, small, big))
    frames = _codec.encode(message, max_frame=4096)
    assert all(memoryview(f).nbytes <= 4096 for f in frames[1:])
    assert len(frames) == 1 + 3 + 1 + 3
    back = _codec.decode([bytes(f) for f in frames])
    assert [bytes(f) for f in back.frames] == [big, small, big]
    assert len(_codec.encode(message)) == 4  # under the limit: as they are


@pytest.mark.parametrize("pieces", [[], [[0, 1]], [[5, 2]], [[1, 2], [0, 2]], "x", [[0, True]]])
def test_a_bad_list_of_pieces_is_a_protocol_error(pieces: object) -> None:
    header = msgpack.packb([m.Manifest.TAG, "d", pieces])
    with pytest.raises(ProtocolError):
        _codec.decode([header, b"a", b"b"])


def test_pieces_leave_room_for_a_keyed_links_overhead_and_stay_small() -> None:
    from distrib.wire._limits import FRAME_OVERHEAD, PIECE_BYTES, piece_bytes

    assert piece_bytes(512 << 20) == PIECE_BYTES == 1 << 20  # (a slow link's pieces arrive)
    assert piece_bytes(1 << 20) == (1 << 20) - FRAME_OVERHEAD
    assert piece_bytes(1) == (1 << 20) - FRAME_OVERHEAD  # (no peer states that)
    frames = _codec.encode(m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 1)],
                                     frames=(b"x" * (1 << 20),)), piece_bytes(1 << 20))
    assert [len(f) for f in frames[1:]] == [(1 << 20) - FRAME_OVERHEAD, FRAME_OVERHEAD]


@pytest.mark.parametrize("size", [(1 << 20) - 33, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_frames_at_and_past_the_limit_cross_a_keyed_link_both_ways(
        size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import zmq

    from distrib.wire import _keys, _transport
    from distrib.wire._carry import Carried

    # Both sides take frames of at most 1 MiB as libzmq counts them: encrypted, 33 bytes more.
    monkeypatch.setattr(_transport, "MAX_MESSAGE_BYTES", 1 << 20)
    ctx: zmq.Context[object] = zmq.Context()
    server = _keys.generate()
    router, address = _transport.router(ctx, "tcp://127.0.0.1:0", server)
    dealer = _transport.dealer(ctx, address, server.public, _keys.generate())
    carried = Carried()

    def receive(sock: zmq.Socket[object], peer: bool) -> tuple[bytes, m.Message]:
        while True:  # (pieces of a payload larger than one come ahead, one message each)
            assert sock.poll(30_000), "the keyed connection was dropped"
            frames = sock.recv_multipart(copy=False)
            whole = carried.take(frames[1:] if peer else frames)
            if whole is not None:
                return frames[0].bytes if peer else b"", _codec.decode(whole)

    try:
        payload = bytes(range(256)) * (size // 256) + b"e" * (size % 256)
        message = m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 1)], frames=(payload,))
        _transport.send(dealer, message, max_frame=1 << 20)
        peer, back = receive(router, peer=True)
        assert bytes(back.frames[0]) == payload
        _transport.send(router, message, peer, max_frame=1 << 20)
        assert bytes(receive(dealer, peer=False)[1].frames[0]) == payload
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_a_payload_of_more_than_one_piece_is_carried_ahead_and_put_back_per_peer() -> None:
    from distrib.wire._carry import HEADER, Carried, split

    big = bytes(range(256)) * 40  # 10,240 bytes: three pieces of 4,096
    message = m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 2)], frames=(big, b"tail"))
    frames = _codec.encode(message, 4096)
    sent = split(frames, 4096)
    assert [len(x) for x in sent] == [2, 2, 3, 1]  # three carried ahead, then the header
    assert all(x[0] == HEADER for x in sent[:-1]) and sent[-1] == [frames[0]]
    carried = Carried()
    other = _codec.encode(m.Results([m.ResultSpec(2, m.Outcome.OK, {}, [], 1)],
                                    frames=(b"other",)), 4096)
    for x in sent[:2]:
        assert carried.take([bytes(f) for f in x], b"a") is None
    assert carried.take(other, b"b") == other  # another peer's messages pass between
    for x in sent[2:-1]:
        assert carried.take([bytes(f) for f in x], b"a") is None
    whole = carried.take(sent[-1], b"a")
    assert whole is not None
    back = _codec.decode(whole)
    assert [bytes(f) for f in back.frames] == [big, b"tail"]
    assert carried.take(other, b"a") == other  # nothing left over
    # One piece or less goes as it is; a peer that left takes what it carried with it.
    assert split(other, 4096) == [other]
    assert carried.take([HEADER, b"x"], b"c") is None
    carried.forget(b"c")
    assert carried.take(other, b"c") == other


def test_a_peer_carrying_too_many_frames_ahead_breaks_the_protocol(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from distrib.wire import _carry

    monkeypatch.setattr(_carry, "MAX_CARRIED", 3)
    carried = _carry.Carried()
    for _ in range(3):
        assert carried.take([_carry.HEADER, b"x"]) is None
    with pytest.raises(ProtocolError, match="more than 3 Carry messages ahead"):
        carried.take([_carry.HEADER, b"x"])
    assert carried.take([b"h"]) == [b"h"]  # (what it carried went)


def test_many_small_frames_are_carried_together_in_pieces() -> None:
    from distrib.wire._carry import Carried, carries, split

    small = [bytes([i]) * 100 for i in range(100)]  # 10,000 bytes in 100 frames
    frames = _codec.encode(m.Results([m.ResultSpec(1, m.Outcome.OK, {}, [], 100)],
                                     frames=tuple(small)), 4096)
    sent = split(frames, 4096)
    assert [len(x) - 1 for x in sent] == [40, 40, 20, 0]  # frames in each Carry, none last
    assert len(sent) - 1 <= carries(10_000, 4096)
    carried = Carried()
    assert [carried.take(x) for x in sent[:-1]] == [None] * 3
    whole = carried.take(sent[-1])
    assert whole is not None
    assert [bytes(f) for f in _codec.decode(whole).frames] == small


@pytest.mark.parametrize("limit_mib", [1, 2, 64, 512, 4096])
def test_a_payload_up_to_the_largest_one_message_carries_fits_every_link(
        limit_mib: int) -> None:
    from distrib.wire._carry import carries
    from distrib.wire._limits import MAX_CARRIED, MAX_PAYLOAD_BYTES, piece_bytes

    assert carries(MAX_PAYLOAD_BYTES, piece_bytes(limit_mib << 20)) <= MAX_CARRIED
