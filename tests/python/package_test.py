"""The package without a daemon: generated stubs, dtype/bfloat16 conversions, request building,
the hand-encoded health messages, the error mapping."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest

import attnd
from attnd import _requests as rq
from attnd import _transport as tr
from attnd import tensors as t
from attnd.v1 import attnd_pb2 as pb
from attnd.v1 import attnd_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto" / "attnd" / "v1" / "attnd.proto"


def test_stubs_match_the_wire_api():
    """Every message, enum and field of proto/attnd/v1/attnd.proto is in the generated module."""
    text = re.sub(r"//[^\n]*", "", PROTO.read_text())
    messages = re.findall(r"^message (\w+)", text, flags=re.M)
    assert len(messages) > 30
    for name in messages:
        assert name in pb.DESCRIPTOR.message_types_by_name, name
    for name in re.findall(r"^enum (\w+)", text, flags=re.M):
        assert name in pb.DESCRIPTOR.enum_types_by_name, name
    # each field "type name = N;" of RunRequest / AttentionOptions, by number
    for msg in ("RunRequest", "AttentionOptions", "CreatePlanRequest", "PoolInfo"):
        body = re.search(r"^message %s \{(.*?)^\}" % msg, text, flags=re.M | re.S).group(1)
        fields = dict((int(n), f) for f, n in re.findall(r"(\w+) = (\d+)", body))
        desc = pb.DESCRIPTOR.message_types_by_name[msg]
        assert {f.number: f.name for f in desc.fields} == fields
    rpcs = re.findall(r"^\s+rpc (\w+)\(", text, flags=re.M)
    assert set(rpcs) == set(pb.DESCRIPTOR.services_by_name["Attnd"].methods_by_name)
    assert hasattr(pb_grpc, "AttndStub")


def test_unary_method_table_covers_every_stream_command():
    oneof = pb.SessionRequest.DESCRIPTOR.oneofs_by_name["command"]
    commands = {f.name for f in oneof.fields} - {"open"}
    assert commands == set(tr.UNARY_METHOD)
    methods = pb.DESCRIPTOR.services_by_name["Attnd"].methods_by_name
    for cmd, method in tr.UNARY_METHOD.items():
        assert method in methods
        result = pb.SessionResponse.DESCRIPTOR.fields_by_name[tr.RESULT_FIELD[cmd]].message_type
        assert result.name == methods[method].output_type.name
        assert cmd in pb.SessionRequest.DESCRIPTOR.fields_by_name
    results = pb.SessionResponse.DESCRIPTOR.oneofs_by_name["result"]
    assert {f.name for f in results.fields} == set(tr.RESULT_FIELD.values())


@pytest.mark.parametrize("dtype,np_dtype", [("float32", np.float32), ("float16", np.float16)])
def test_inline_tensor_round_trip(dtype, np_dtype):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4).astype(np_dtype) / 7
    msg = t.numpy_to_tensor(a)
    assert msg.dtype == t.dtype_enum(dtype) and list(msg.shape) == [2, 3, 4]
    assert len(msg.inline_data) == a.nbytes
    back = t.tensor_to_numpy(pb.Tensor.FromString(msg.SerializeToString()))
    assert back.dtype == np_dtype and np.array_equal(back, a)
    back[0, 0, 0] = 1  # writable


def test_inline_tensor_is_little_endian():
    msg = t.numpy_to_tensor(np.array([1.5, -2.0], dtype=">f4"))
    assert msg.inline_data == struct.pack("<2f", 1.5, -2.0)


def test_bfloat16_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.5, 65504.0, np.inf, 0.0], np.float32)
    bits = attnd.float32_to_bfloat16(x)
    expected = []
    for v in x:
        u = struct.unpack("<I", struct.pack("<f", v))[0]
        lsb = (u >> 16) & 1
        expected.append(((u + 0x7FFF + lsb) >> 16) & 0xFFFF)
    assert bits.tolist() == expected
    assert attnd.float32_to_bfloat16(np.float32(1.00390625)).item() == 0x3F80  # tie to even
    assert attnd.float32_to_bfloat16(np.float32(1.01171875)).item() == 0x3F82  # tie to even (up)
    assert np.isnan(attnd.bfloat16_to_float32(attnd.float32_to_bfloat16(np.float32(np.nan))))
    y = attnd.bfloat16_to_float32(bits)
    assert y.dtype == np.float32 and y[0] == 1.0 and y[3] == -3.5
    msg = t.numpy_to_tensor(bits, "bfloat16")
    assert msg.dtype == pb.DTYPE_BFLOAT16
    assert np.array_equal(t.tensor_to_numpy(msg), bits)


def test_dtype_names_and_errors():
    assert t.dtype_enum("bf16") == pb.DTYPE_BFLOAT16
    assert t.dtype_enum(np.float16) == pb.DTYPE_FLOAT16
    assert t.dtype_enum("torch.float32") == pb.DTYPE_FLOAT32
    assert t.dtype_enum(pb.DTYPE_FLOAT16) == pb.DTYPE_FLOAT16
    with pytest.raises(ValueError):
        t.dtype_enum("int8")
    with pytest.raises(ValueError, match="ambiguous"):
        t.numpy_to_tensor(np.zeros(3, np.uint16))
    with pytest.raises(ValueError):
        t.numpy_to_tensor(np.zeros(3, np.float32), "bfloat16")


def test_attention_options():
    o = rq.attention_options()
    assert not o.window_left_set and o.sm_scale == 0 and o.pos_encoding == pb.POS_ENCODING_NONE
    o = rq.attention_options(causal=True, window_left=0, pos_encoding="ROPE_LLAMA",
                             rope_offsets=np.array([1, 2]), logits_soft_cap=30.0, return_lse=True)
    assert o.causal and o.window_left_set and o.window_left == 0
    assert o.pos_encoding == pb.POS_ENCODING_ROPE_LLAMA and list(o.rope_offsets) == [1, 2]
    assert o.logits_soft_cap == 30.0 and o.return_lse
    assert not rq.attention_options(window_left=-1).window_left_set
    with pytest.raises(ValueError):
        rq.attention_options(pos_encoding="alibi")


def test_run_request_inline():
    q = np.ones((3, 4, 64), np.float16)
    k = np.ones((3, 2, 64), np.float32)
    tp = rq.TensorPlan(q, k, k, kv_dtype=pb.DTYPE_FLOAT16, return_lse=True)
    req = tp.run_request("plan-1", 2, rq.attention_options(return_lse=True))
    assert req.plan_id == "plan-1" and req.layer == 2
    assert req.q.dtype == pb.DTYPE_FLOAT16 and list(req.q.shape) == [3, 4, 64]
    assert req.k.dtype == pb.DTYPE_FLOAT16  # converted to the pool's kv dtype
    assert len(req.k.inline_data) == 3 * 2 * 64 * 2
    assert not req.HasField("o") and not req.HasField("lse")  # inline outputs
    resp = pb.RunResponse(o=t.numpy_to_tensor(np.full((3, 4, 64), 2, np.float16)),
                          lse=t.numpy_to_tensor(np.zeros((3, 4), np.float32)))
    o, lse = tp.outputs(resp)
    assert o.dtype == np.float16 and (o == 2).all() and lse.shape == (3, 4)


def test_plan_request_and_int_lists():
    req = rq.create_plan_request("p", pb.ATTENTION_KIND_PREFILL, 8, np.array([0, 2]),
                                 [4, 5], (3,), [0, 7])
    assert list(req.kv_indptr) == [0, 2] and list(req.kv_indices) == [4, 5]
    assert list(req.kv_last_page_len) == [3] and list(req.qo_indptr) == [0, 7]
    with pytest.raises(ValueError):
        rq.int32_list("kv_indices", np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError):
        rq.int32_list("kv_indices", [0.5])


def test_health_messages():
    assert tr.encode_health_request("") == b""
    assert tr.encode_health_request("attnd.v1.Attnd") == b"\x0a\x0eattnd.v1.Attnd"
    assert tr.decode_health_response(b"") == "UNKNOWN"
    assert tr.decode_health_response(b"\x08\x01") == "SERVING"
    assert tr.decode_health_response(b"\x08\x02") == "NOT_SERVING"
    # unknown fields are skipped
    assert tr.decode_health_response(b"\x12\x02hi\x08\x03") == "SERVICE_UNKNOWN"


def test_targets_and_metadata():
    assert tr.normalize_target("/tmp/x.sock") == "unix:///tmp/x.sock"
    assert tr.normalize_target("unix:///a") == "unix:///a"
    assert tr.normalize_target("localhost:5000") == "localhost:5000"
    assert tr.call_metadata("tok", "s1") == [("authorization", "Bearer tok"),
                                             ("x-attnd-session", "s1")]
    assert tr.call_metadata(None) == []


def test_every_status_code_has_an_exception():
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        err = attnd.errors.error_from_code(code.value[0], "msg", "Run")
        assert err.code == code and err.message == "msg" and err.method == "Run"
        assert type(err) is not attnd.AttndError, code
        assert type(err).__name__ in attnd.__all__
    assert isinstance(attnd.errors.error_from_code(3, "x"), attnd.InvalidArgument)
    assert isinstance(attnd.errors.error_from_code(99, "x"), attnd.Unknown)


def test_retry_policy_backoff_is_capped():
    p = tr.RetryPolicy(retries=3, backoff=0.1, max_backoff=0.3)
    assert all(0.05 <= p.delay(i) <= 0.3 for i in range(10))
    assert p.retryable(grpc.StatusCode.UNAVAILABLE)
    assert not p.retryable(grpc.StatusCode.INVALID_ARGUMENT)
