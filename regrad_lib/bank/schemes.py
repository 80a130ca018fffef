"""Storage schemes of the Gradient Bank: how one flat LoRA gradient row is encoded (tensor code only, no files).

============ ============================================================= =======================
scheme       stored per row                                                decoding error
============ ============================================================= =======================
``fp32``     the values                                                    none
``bf16``     the values in bf16 (``fp16`` likewise)                        ≤ 2^-9 relative
``int8``     one int8 code per value + one bf16 scale per group            ≤ s/2 ≤ absmax/254·(1+2^-7)
``int4``     4-bit codes, two per byte + one bf16 scale per group          ≤ s/2 ≤ absmax/14·(1+2^-7)
``int2``     2-bit codes, four per byte + one bf16 scale per group         ≤ s/2 ≤ absmax/2·(1+2^-7)
============ ============================================================= =======================

Integer schemes are symmetric with one scale per group of ``G`` consecutive values of ONE LoRA tensor (A and B
gradients differ in magnitude, so a group never spans two tensors; a tensor whose size is not a multiple of
``G`` gets a zero-padded last group). ``s = absmax(group) / qmax`` (qmax 127, 7, 1) is rounded UP to bf16 (the
fp32 exponent range, so tiny gradients never underflow the scale as fp16 would; rounding up means no code
clips), ``code = round(x / s)`` in ``[-qmax, qmax]``, decoded value ``code · s``: a product of ≤ 7 and 8
significant bits, exact in fp32, so a sum of decoded rows in fp32 is the exact sum of the decoded entries.
Packed codes are two's-complement bit fields in planar order (int4: byte ``j`` holds position ``j`` in its
low nibble and ``j + P/2`` in its high nibble; int2: ``j + k·P/4`` in bits ``2k, 2k+1``), unpacked with
arithmetic shifts into contiguous planes. A scheme is named ``int4`` (``G`` = 64) or ``int4-g128``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT_BITS = {"int8": 8, "int4": 4, "int2": 2}
KINDS = (*FLOATS, *INT_BITS)
DEFAULT_GROUP = 64
MAX_GROUP = 4096       # larger groups pad every LoRA tensor to a multiple of G and blur the scale: no use
DEFAULT = "int4"                               # chosen from the measured frontier (README "Gradient Bank")
SCALE_DTYPE = torch.bfloat16
VALUES, SCALES = "values", "scales"           # tensor names in a shard
Layout = Sequence[tuple[str, tuple[int, ...]]]
_CHUNK_VALUES = {"cpu": 1 << 22}               # decode in row chunks of ≤ 4M values on the CPU (cache-sized buffers)


@dataclass(frozen=True)
class Scheme:
    """One storage scheme: ``kind`` (fp32, bf16, fp16, int8, int4, int2) and, for integer kinds, ``group_size``."""

    kind: str
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"bank scheme {self.kind!r} is not supported; choose one of {list(KINDS)}")
        if self.quantised:
            g = self.group_size
            if not isinstance(g, int) or isinstance(g, bool) or g < 8 or g % 8 or g > MAX_GROUP:
                raise ValueError(f"scheme {self.kind}: group_size={g!r} must be a multiple of 8 from 8 to {MAX_GROUP} "
                                 "(a group shares one scale; the default is 64)")
        elif self.group_size is not None:
            raise ValueError(f"scheme {self.kind} stores plain values: it takes no group size ({self.group_size})")

    # --- facts -----------------------------------------------------------------------------------------
    @property
    def quantised(self) -> bool:
        return self.kind in INT_BITS

    @property
    def name(self) -> str:
        """Canonical name: ``bf16``, ``int4`` (default group), ``int4-g128``."""
        if self.quantised and self.group_size != DEFAULT_GROUP:
            return f"{self.kind}-g{self.group_size}"
        return self.kind

    @property
    def bits(self) -> int:
        return INT_BITS[self.kind] if self.quantised else torch.finfo(FLOATS[self.kind]).bits

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def value_dtype(self) -> torch.dtype:
        """dtype of the stored ``values`` tensor."""
        if not self.quantised:
            return FLOATS[self.kind]
        return torch.int8 if self.bits == 8 else torch.uint8

    def padded(self, layout: Layout) -> int:
        """Values per row in the stored (group-padded) order: ``numel`` for float schemes."""
        sizes = [math.prod(shape) for _, shape in layout]
        if not self.quantised:
            return sum(sizes)
        g = self.group_size
        return sum(-(-n // g) * g for n in sizes)

    def shapes(self, layout: Layout) -> dict[str, tuple[int, torch.dtype]]:
        """Per stored tensor: (columns per row, dtype)."""
        p = self.padded(layout)
        if not self.quantised:
            return {VALUES: (p, self.value_dtype)}
        return {VALUES: (p * self.bits // 8, self.value_dtype), SCALES: (p // self.group_size, SCALE_DTYPE)}

    def row_bytes(self, layout: Layout) -> int:
        """Bytes of one stored row (codes and scales)."""
        return sum(cols * dtype.itemsize for cols, dtype in self.shapes(layout).values())

    def error_bound(self, absmax: torch.Tensor) -> torch.Tensor:
        """Largest decoding error of a value in a group of this absmax (integer schemes): ``s/2``, s rounded up."""
        return absmax / self.qmax * (1 + 2 ** -7) / 2

    # --- encoding (on the gradients' device) ---------------------------------------------------------------
    def encode(self, x: torch.Tensor, layout: Layout) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``[n, D]`` fp32 gradients → ({tensor name: ``[n, cols]``}, ``ok[n]``) on x's device.

        ``ok`` is False for a row with a NaN/inf, or (float schemes) a value beyond the storage dtype's range.
        """
        x = x.detach().float()
        if not self.quantised:
            limit = torch.finfo(self.value_dtype).max        # NaN fails both comparisons; inf and overflow fail one
            ok = (x.amax(dim=1) <= limit) & (x.amin(dim=1) >= -limit) if x.shape[1] else torch.ones(len(x), dtype=bool)
            return {VALUES: x.to(self.value_dtype)}, ok
        n, g = x.shape[0], self.group_size
        groups = _pad(x, layout, g).view(n, -1, g)
        scale = _bf16_round_up(groups.abs().amax(dim=-1) / self.qmax)      # NaN and inf propagate into the scale
        ok = torch.isfinite(scale).all(dim=-1)
        s = scale.float()
        inverse = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), 0.0).unsqueeze(-1)   # an all-zero group: 0
        codes = (groups * inverse).round_().clamp_(-self.qmax, self.qmax)
        return {VALUES: _pack(codes.to(torch.int8).view(n, -1), self.bits), SCALES: scale}, ok

    # --- decoding (on the target device) -------------------------------------------------------------------
    def decoder(self, layout: Layout, device: torch.device | str) -> Decoder:
        return Decoder(self, layout, torch.device(device))

    def decode(self, parts: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
        """Stored rows → ``[n, numel]`` fp32 gradients (on the parts' device)."""
        values = parts[VALUES]
        total = torch.zeros((values.shape[0], self.padded(layout)), dtype=torch.float32, device=values.device)
        self.decoder(layout, values.device).add(total, parts)
        return unpad(total, layout, self) if self.quantised else total


class Decoder:
    """Adds decoded stored rows into fp32 totals, with scratch buffers reused across calls (no per-row allocations).

    Conversions run into preallocated buffers: on a CPU a fresh 100 MB tensor costs more in page faults than the
    arithmetic, and mixed-dtype in-place adds are several times slower than a conversion copy plus an fp32 add.
    """

    def __init__(self, scheme: Scheme, layout: Layout, device: torch.device):
        self.scheme, self.device = scheme, device
        self.width = scheme.padded(layout)
        self.chunk = max(1, _CHUNK_VALUES.get(device.type, 1 << 30) // max(1, self.width))
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def _buffer(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(dtype)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[dtype] = torch.empty((rows, self.width), dtype=dtype, device=self.device)
        return buf[:rows]

    def add(self, total: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """``total[i] += decode(parts row i)`` for ``total`` of ``[n, padded]`` fp32 (n rows of parts)."""
        s = self.scheme
        for a in range(0, total.shape[0], self.chunk):
            b = min(a + self.chunk, total.shape[0])
            out, values = total[a:b], parts[VALUES][a:b]
            if values.dtype == torch.float32:
                out.add_(values)
                continue
            f = self._buffer(b - a, torch.float32)
            if not s.quantised:
                out.add_(f.copy_(values))
                continue
            if s.bits < 8:
                values = _unpack(values, s.bits, self._buffer(b - a, torch.int8))
            f.copy_(values)
            scales = parts[SCALES][a:b].float().unsqueeze(-1)
            out.view(b - a, -1, s.group_size).addcmul_(f.view(b - a, -1, s.group_size), scales)


def parse(name: str | Scheme) -> Scheme:
    """``"bf16"``, ``"int8"``, ``"int4"`` (group 64), ``"int4-g128"`` → :class:`Scheme`; a clear error otherwise."""
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise ValueError(f"bank scheme {name!r} must be a string such as 'int4', 'int8', 'bf16' or 'int4-g128'")
    match = re.fullmatch(r"(int[248])(?:-g(\d+))?", name)
    if match:
        return Scheme(match[1], int(match[2]) if match[2] else DEFAULT_GROUP)
    if name in FLOATS:
        return Scheme(name)
    raise ValueError(f"bank scheme {name!r} is not supported; choose one of {list(KINDS)} (integer schemes take "
                     f"an optional group size, e.g. 'int4-g128'; default group {DEFAULT_GROUP})")


def describe(name: str | Scheme) -> dict:
    """The manifest's record of a scheme: ``{"scheme": canonical name, "group_size": G or None}``."""
    s = parse(name)
    return {"scheme": s.name, "group_size": s.group_size}


def unpad(total: torch.Tensor, layout: Layout, scheme: Scheme) -> torch.Tensor:
    """``[n, padded]`` → ``[n, numel]`` (a view when nothing is padded)."""
    if not scheme.quantised or scheme.padded(layout) == sum(math.prod(shape) for _, shape in layout):
        return total
    g, pieces, offset = scheme.group_size, [], 0
    for _, shape in layout:
        n = math.prod(shape)
        pieces.append(total[:, offset:offset + n])
        offset += -(-n // g) * g
    return torch.cat(pieces, dim=1)


def unflatten(total: torch.Tensor, layout: Layout, scheme: Scheme) -> dict[str, torch.Tensor]:
    """``[n, padded]`` → ``{name: [n, *shape]}`` views into ``total`` (the padding is skipped)."""
    g = scheme.group_size if scheme.quantised else 1
    out, offset = {}, 0
    for name, shape in layout:
        n = math.prod(shape)
        out[name] = total[:, offset:offset + n].view(total.shape[0], *shape)
        offset += -(-n // g) * g
    return out


# --- helpers ------------------------------------------------------------------------------------------------

def _pad(x: torch.Tensor, layout: Layout, g: int) -> torch.Tensor:
    """Each LoRA tensor's segment zero-padded to a multiple of ``g`` (no copy when none needs it)."""
    sizes = [math.prod(shape) for _, shape in layout]
    if all(n % g == 0 for n in sizes):
        return x
    pieces, offset = [], 0
    for n in sizes:
        pieces.append(x[:, offset:offset + n])
        if n % g:
            pieces.append(x.new_zeros((x.shape[0], g - n % g)))
        offset += n
    return torch.cat(pieces, dim=1)


def _bf16_round_up(scale: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16, rounded toward +inf for non-negative values (so ``scale·qmax ≥ absmax``)."""
    out = scale.to(SCALE_DTYPE)
    low = out.float() < scale
    if bool(low.any()):
        bits = out.view(torch.int16)
        out = torch.where(low, bits + 1, bits).view(SCALE_DTYPE)   # the next bf16 up (scale ≥ 0, finite)
    return out


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[n, P]`` int8 codes in ``[-qmax, qmax]`` → ``[n, P·bits/8]`` (int8 as is; 4/2 bits packed into uint8).

    Planar: byte ``j`` holds positions ``j, j + P/per, …`` (``per`` = 8/bits codes per byte, plane k in bits
    ``bits·k …``), so unpacking writes ``per`` contiguous planes (interleaved writes are several times slower).
    """
    if bits == 8:
        return codes
    per = 8 // bits
    mask = (1 << bits) - 1
    planes = codes.view(codes.shape[0], per, -1)
    packed = planes[:, 0] & mask
    for k in range(1, per):
        packed = packed | ((planes[:, k] & mask) << (bits * k))    # int8 shifts wrap: the bit pattern is right
    return packed.view(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    """Packed uint8 ``[n, P·bits/8]`` → signed int8 codes ``[n, P]`` written into ``out`` (arithmetic shifts)."""
    per = 8 // bits
    signed = packed.view(torch.int8)
    planes = out.view(out.shape[0], per, -1)
    for k in range(per):
        left = 8 - bits * (k + 1)
        source = signed << left if left else signed
        torch.bitwise_right_shift(source, 8 - bits, out=planes[:, k])
    return out
