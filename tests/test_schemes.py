"""Storage schemes: round trips within each scheme's bound, packed layouts, exact fp32 sums, refusals (no files)."""

import math

import pytest
import torch

from regrad_lib.bank import schemes

LAYOUT = [("m.0.lora_A", (8, 16)), ("m.0.lora_B", (32, 8)), ("m.1.lora_A", (8, 24)), ("m.1.lora_B", (16, 8))]
ODD = [("a", (3, 5)), ("b", (1, 1)), ("c", (7, 9))]      # 15 + 1 + 63 values: every tensor needs padding
QMAX = {"int8": 127, "int4": 7, "int2": 1}


def _numel(layout):
    return sum(math.prod(s) for _, s in layout)


def _random(n, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, _numel(layout), generator=g)
    return x * torch.logspace(-6, 2, n).unsqueeze(1)        # rows of very different magnitudes


def _group_absmax(x, layout, g):
    """Per value: the absmax of its group (groups of g within each tensor), computed the slow way."""
    out = torch.empty_like(x)
    offset = 0
    for _, shape in layout:
        n = math.prod(shape)
        for start in range(0, n, g):
            stop = min(start + g, n)
            block = x[:, offset + start:offset + stop]
            out[:, offset + start:offset + stop] = block.abs().amax(dim=1, keepdim=True)
        offset += n
    return out


def _offsets(layout):
    """(first column, values) of each tensor in a flat row."""
    out, offset = [], 0
    for _, shape in layout:
        out.append((offset, math.prod(shape)))
        offset += math.prod(shape)
    return out


@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_the_group_scale_is_rounded_up_so_the_largest_value_never_clips(name):
    """s = absmax / qmax rounded UP to bf16: s · qmax ≥ absmax in every group. By hand: absmax = qmax (1 + 2^-9)
    gives absmax / qmax = 1 + 2^-9, between the bf16 neighbours 1 and 1 + 2^-7; nearest would give 1 (the largest
    value's code would then exceed qmax), up gives 1 + 2^-7."""
    qmax = QMAX[name]
    x = torch.zeros(1, 64)
    x[0, 5], x[0, 9] = qmax * (1 + 2 ** -9), -0.25
    parts, ok = schemes.parse(name).encode(x, [("a", (8, 8))])
    assert bool(ok.all()) and parts[schemes.SCALES].float().tolist() == [[1 + 2 ** -7]]
    data = _random(6, LAYOUT, seed=3)
    for g in (64, 128):
        scheme = schemes.parse(f"{name}-g{g}")
        scale = scheme.encode(data, LAYOUT)[0][schemes.SCALES].float()
        starts = [offset + start for offset, n in _offsets(LAYOUT) for start in range(0, n, g)]
        absmax = _group_absmax(data, LAYOUT, g)[:, starts]           # each group's absmax, the slow way
        assert absmax.shape == scale.shape
        assert bool((scale * qmax >= absmax).all())
        assert bool((scale * qmax < absmax * (1 + 2 ** -7) * (1 + 1e-6)).all())    # and the next bf16 up only


@pytest.mark.parametrize("name", ["int8", "int4", "int2", "int4-g128", "int8-g8"])
@pytest.mark.parametrize("layout", [LAYOUT, ODD], ids=["aligned", "odd"])
def test_integer_round_trip_within_the_group_bound(name, layout):
    scheme = schemes.parse(name)
    x = _random(6, layout)
    parts, ok = scheme.encode(x, layout)
    assert ok.all()
    decoded = scheme.decode(parts, layout)
    assert decoded.shape == x.shape and decoded.dtype == torch.float32
    absmax = _group_absmax(x, layout, scheme.group_size)
    err = (decoded - x).abs()
    assert (err <= absmax / QMAX[scheme.kind]).all()              # the bound every scheme must meet: absmax / qmax
    assert (err <= scheme.error_bound(absmax) * (1 + 1e-6)).all()  # ours: half a (rounded-up) step
    assert parts["scales"].dtype == torch.bfloat16 and parts["values"].shape[1] * 8 // scheme.bits == \
        scheme.padded(layout)


@pytest.mark.parametrize("name,dtype,rel", [("fp32", torch.float32, 0.0), ("bf16", torch.bfloat16, 2 ** -8),
                                            ("fp16", torch.float16, 2 ** -10)])
def test_float_round_trip(name, dtype, rel):
    scheme = schemes.parse(name)
    x = torch.randn(3, _numel(LAYOUT)) * 10
    parts, ok = scheme.encode(x, LAYOUT)
    assert ok.all() and parts["values"].dtype == dtype and set(parts) == {"values"}
    decoded = scheme.decode(parts, LAYOUT)
    assert torch.equal(decoded, x.to(dtype).float())
    assert ((decoded - x).abs() <= x.abs() * rel).all()


def test_scales_keep_tiny_gradients_that_fp16_would_flush():
    x = torch.randn(2, _numel(LAYOUT)) * 1e-12
    scheme = schemes.parse("int8")
    decoded = scheme.decode(scheme.encode(x, LAYOUT)[0], LAYOUT)
    assert (decoded != 0).float().mean() > 0.9
    assert ((decoded - x).abs() <= _group_absmax(x, LAYOUT, 64) / 127).all()
    assert (x.to(torch.float16) == 0).all()       # what an fp16 scale (or fp16 storage) would have kept


@pytest.mark.parametrize("name", ["int8", "int4", "int2"])
def test_zero_groups_and_extremes(name):
    scheme = schemes.parse(name)
    x = torch.randn(2, _numel(ODD))
    x[0, :15] = 0                          # the whole first tensor: an all-zero (padded) group
    x[1, 15] = -3.0                        # tensor "b" is one value: its group's absmax is itself
    x[1, 16:] = torch.linspace(-2, 2, 63)  # ±absmax at the ends of tensor "c"
    parts, _ = scheme.encode(x, ODD)
    decoded = scheme.decode(parts, ODD)
    assert torch.equal(decoded[0, :15], torch.zeros(15))
    q = QMAX[scheme.kind]
    assert abs(float(decoded[1, 15]) + 3.0) <= 3.0 / q * (1 + 2 ** -7) / 2
    assert abs(float(decoded[1, 16]) + 2.0) <= 2.0 / q * (1 + 2 ** -7) / 2
    assert abs(float(decoded[1, -1]) - 2.0) <= 2.0 / q * (1 + 2 ** -7) / 2
    codes = schemes._unpack(parts["values"], scheme.bits, torch.empty(2, scheme.padded(ODD), dtype=torch.int8)) \
        if scheme.bits < 8 else parts["values"]
    assert int(codes.abs().max()) == q and int(codes[0, :64].abs().max()) == 0


def test_int4_planar_packing_bit_layout():
    scheme = schemes.parse("int4-g8")
    layout = [("t", (1, 8))]
    codes = torch.tensor([[1, -1, 7, -7, 0, 3, -8 + 1, 2]], dtype=torch.int8)
    packed = schemes._pack(codes, 4)
    # byte j: position j in the low nibble, position j + 4 in the high nibble (two's complement)
    assert packed.tolist() == [[0x01, 0x3F, 0x97, 0x29]]
    out = torch.empty(1, 8, dtype=torch.int8)
    assert torch.equal(schemes._unpack(packed, 4, out), codes)
    two = torch.tensor([[1, -1, 0, 1, -1, 0, 1, 1]], dtype=torch.int8)
    packed2 = schemes._pack(two, 2)
    # byte j holds positions j, j+2, j+4, j+6 in bit pairs 0-1, 2-3, 4-5, 6-7
    assert packed2.tolist() == [[0b01_11_00_01, 0b01_00_01_11]]
    assert torch.equal(schemes._unpack(packed2, 2, torch.empty(1, 8, dtype=torch.int8)), two)
    x = torch.tensor([[0.5, -0.5, 3.5, -3.5, 0.0, 1.5, -3.0, 1.0]])
    parts, _ = scheme.encode(x, layout)
    assert float(parts["scales"][0, 0]) == 0.5 and torch.equal(scheme.decode(parts, layout), x)


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16", "int8", "int4", "int2"])
def test_non_finite_rows_are_flagged(name):
    scheme = schemes.parse(name)
    x = torch.randn(4, _numel(ODD))
    x[1, 3], x[2, 40], x[3, 0] = float("nan"), float("inf"), -float("inf")
    _, ok = scheme.encode(x, ODD)
    assert ok.tolist() == [True, False, False, False]


@pytest.mark.parametrize("name", ["bf16", "int8", "int4", "int2"])
def test_decoder_sums_are_exact_sums_of_decoded_rows(name):
    scheme = schemes.parse(name)
    x = _random(5, LAYOUT, seed=3)
    parts, _ = scheme.encode(x, LAYOUT)
    decoded = scheme.decode(parts, LAYOUT)
    total = torch.zeros(1, scheme.padded(LAYOUT))
    decoder = scheme.decoder(LAYOUT, "cpu")
    for i in (4, 0, 2):
        decoder.add(total, {k: v[i:i + 1] for k, v in parts.items()})
    assert torch.equal(total[0], (decoded[4] + decoded[0]) + decoded[2])


def test_decoder_chunks_rows_on_the_cpu(monkeypatch):
    monkeypatch.setitem(schemes._CHUNK_VALUES, "cpu", 300)    # 1 row of 256 values per chunk
    scheme = schemes.parse("int4")
    x = _random(3, LAYOUT, seed=4)
    parts, _ = scheme.encode(x, LAYOUT)
    total = torch.zeros(3, scheme.padded(LAYOUT))
    decoder = scheme.decoder(LAYOUT, "cpu")
    assert decoder.chunk == 1
    decoder.add(total, parts)
    assert torch.equal(total, scheme.decode(parts, LAYOUT))


def test_unflatten_skips_padding():
    scheme = schemes.parse("int4")
    x = _random(2, ODD, seed=5)
    parts, _ = scheme.encode(x, ODD)
    padded = torch.zeros(2, scheme.padded(ODD))
    scheme.decoder(ODD, "cpu").add(padded, parts)
    views = schemes.unflatten(padded, ODD, scheme)
    decoded = scheme.decode(parts, ODD)
    assert [tuple(v.shape) for v in views.values()] == [(2, 3, 5), (2, 1, 1), (2, 7, 9)]
    assert torch.equal(torch.cat([v.reshape(2, -1) for v in views.values()], dim=1), decoded)


def test_names_sizes_and_errors():
    assert schemes.parse("int4") == schemes.Scheme("int4", 64) and schemes.parse("int4").name == "int4"
    assert schemes.parse("int4-g128").name == "int4-g128" and schemes.parse("int8-g64").name == "int8"
    assert schemes.describe("int2-g32") == {"scheme": "int2-g32", "group_size": 32}
    assert schemes.describe("bf16") == {"scheme": "bf16", "group_size": None}
    d = 3_932_160                                                       # Llama-3.2-1B layout: all multiples of 64
    one_b = [("t", (d,))]
    assert schemes.parse("fp32").row_bytes(one_b) == 4 * d
    assert schemes.parse("int8").row_bytes(one_b) == d + d // 64 * 2
    assert schemes.parse("int4").row_bytes(one_b) == d // 2 + d // 64 * 2          # 4.25 bits per value
    assert schemes.parse("int2").row_bytes(one_b) == d // 4 + d // 64 * 2
    for bad in ("int3", "fp8", "int4-g0", "int4-g12", "INT4", 4, "bf16-g64"):
        with pytest.raises(ValueError, match="scheme|group_size"):
            schemes.parse(bad)
    with pytest.raises(ValueError, match="no group size"):
        schemes.Scheme("bf16", 64)
