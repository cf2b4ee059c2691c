"""Packed weights: the PyTorch artifact stores every tensor the way the size objective counts it.

One binary file (``weights.bin``) holds byte-aligned sections, described by a JSON index (``weights.json``):

- a compressed weight at b < 32 bits: integer codes ``q + qmax`` (``q`` in ``[-qmax, qmax]``, so b bits each)
  packed little-endian bit by bit, plus one float32 scale per output channel; the weight is ``q * scale``;
- where zeros make it cheaper (the same choice :func:`autocompress.evaluate.size.weight_storage_bits` makes):
  a bitmask (one bit per weight) and only the non-zero codes, or CSR (per non-zero a column index of
  ``ceil(log2(columns))`` bits, ``rows + 1`` uint32 row pointers) and the non-zero codes;
- a k-means weight-shared weight (``weight_sharing``): the same layouts with codes indexing the layer's
  codebook (its distinct non-zero float32 values, at most 2^b, stored after the codes) instead of scales;
- where the layer allows entropy coding and it is cheapest, ``huffman``: Huffman-coded value codes and zero run
  lengths with their code tables (see :mod:`autocompress.evaluate.entropy`; the escape value and the number of
  gap symbols are in the index, like the shape and ``nnz``);
- a compressed weight kept at 32 bits but sparse: the same layouts with float32 values;
- everything else (biases, BatchNorm, uncompressed layers): raw little-endian values of its own dtype.

So ``len(weights.bin)`` equals the size objective plus at most a few bytes per tensor (byte alignment) and the
integer buffers the objective does not count (e.g. BatchNorm's ``num_batches_tracked``). Nothing is pickled:
reading allocates numpy arrays from bytes described by plain JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compress.quantize import weight_codes
from ..evaluate import entropy as entropy_mod
from ..evaluate.size import codebook_of, weight_storage_bits

PACK_FORMAT = "autocompress-packed-weights"
PACK_VERSION = 2  # 2 added the "shared" encoding and "huffman" storage; version-1 files read unchanged
READABLE_VERSIONS = (1, 2)
# dtypes a packed file may hold (raw tensors); anything else is refused on read
_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
           "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


class PackError(ValueError):
    """A packed weights file is malformed or does not match its index."""


# --- bits ------------------------------------------------------------------------------------------------

def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers ``0 <= v < 2**bits`` -> ``ceil(len * bits / 8)`` bytes, least significant bit first."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be in [1, 32], but got {bits}")
    if v.size and int(v.max()) >= 2**bits:
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    if bits == 8:
        return v.astype(np.uint8).tobytes()
    bitmat = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: bytes, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` unsigned integers of ``bits`` bits each (uint64)."""
    need = math.ceil(n * bits / 8)
    if len(buf) != need:
        raise PackError(f"a {n} x {bits}-bit section needs {need} bytes, but has {len(buf)}")
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        return raw.astype(np.uint64)
    flat = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits).astype(np.uint64)
    return (flat << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def col_bits(cols: int) -> int:
    return max(1, math.ceil(math.log2(max(cols, 2))))


# --- one weight --------------------------------------------------------------------------------------------

@dataclass
class PackedTensor:
    """A tensor's index entry and its bytes (sections in order)."""

    entry: dict[str, Any]
    data: bytes


def pack_weight(w: torch.Tensor, bits: int, scale: torch.Tensor | None = None, *, shared: bool = False,
                entropy: bool = False) -> PackedTensor:
    """Pack a compressed (baked) weight at ``bits`` (32 = float values), sparse where cheaper.

    shared:  a k-means weight-shared weight: codes index its codebook (the distinct non-zero values)
    entropy: Huffman coding is allowed (chosen when the size objective finds it cheapest)
    """
    w = w.detach().to(torch.float32).cpu()
    layout = weight_storage_bits(w, bits, shared=shared, entropy=entropy)
    rows = w.shape[0]
    cols = w.numel() // rows
    flat = w.reshape(rows, cols)
    nz = (flat != 0).numpy()
    sections: list[tuple[str, bytes]] = []
    extra: dict[str, Any] = {}
    if shared:
        book = codebook_of(w, bits)
        values = np.searchsorted(book, flat.numpy()).clip(0, max(book.size - 1, 0)).astype(np.uint64)
        s = book
    elif bits < 32:
        try:
            q, s = weight_codes(w, bits, scale)
        except ValueError as e:
            raise PackError(str(e)) from None
        values = (q.reshape(rows, cols) + (2 ** (bits - 1) - 1)).astype(np.uint64)
    else:
        s = None
        values = flat.numpy()
    if layout.storage == "dense":
        chosen = values.reshape(-1)
    else:
        chosen = values[nz]  # row-major order of the non-zeros
        if layout.storage == "bitmask":
            sections.append(("mask", pack_bits(nz.reshape(-1).astype(np.uint64), 1)))
        elif layout.storage == "csr":
            cols_idx = np.nonzero(nz)[1].astype(np.uint64)
            rowptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype("<u4")
            sections.append(("col", pack_bits(cols_idx, col_bits(cols))))
            sections.append(("rowptr", rowptr.tobytes()))
    if layout.storage == "huffman":
        alphabet = 2**bits if shared else 2 ** bits - 1
        runs = entropy_mod.zero_runs(nz.reshape(-1))
        hl = entropy_mod.huffman_layout(chosen.astype(np.int64), alphabet, runs)
        sections.append(("vtable", entropy_mod.encode_table(hl.value_lengths)))
        sections.append(("values", entropy_mod.encode(chosen.astype(np.int64), hl.value_lengths)))
        sections.append(("gtable", entropy_mod.encode_table(hl.gap_lengths)))
        sections.append(("gaps", entropy_mod.encode(entropy_mod.gap_symbols(runs, hl.escape), hl.gap_lengths)))
        extra = {"escape": hl.escape, "n_gaps": hl.n_gaps}
    elif bits < 32:
        sections.append(("codes", pack_bits(chosen, bits)))
    else:
        sections.append(("values", np.asarray(chosen, dtype="<f4").tobytes()))
    if shared:
        sections.append(("codebook", np.asarray(s, dtype="<f4").tobytes()))
    elif bits < 32:
        sections.append(("scales", np.asarray(s, dtype="<f4").tobytes()))
    encoding = "shared" if shared else "quantized" if bits < 32 else "float"
    entry = {"shape": list(w.shape), "dtype": "float32", "encoding": encoding,
             "bits": bits, "storage": layout.storage, "nnz": layout.nnz, **extra, "objective_bits": layout.size_bits,
             "sections": [[k, len(b)] for k, b in sections]}
    return PackedTensor(entry, b"".join(b for _, b in sections))


def pack_raw(t: torch.Tensor) -> PackedTensor:
    t = t.detach().cpu().contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise PackError(f"cannot store a tensor of dtype {t.dtype}")
    data = t.numpy().astype(np.dtype(_DTYPES[name]).newbyteorder("<"), copy=False).tobytes()
    return PackedTensor({"shape": list(t.shape), "dtype": name, "encoding": "raw", "sections": [["raw", len(data)]]},
                        data)


def _unpack_one(entry: dict[str, Any], sections: dict[str, bytes]) -> torch.Tensor:
    shape = tuple(int(d) for d in entry["shape"])
    numel = math.prod(shape)
    if entry["encoding"] == "raw":
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise PackError(f"unknown dtype {entry['dtype']!r}")
        arr = np.frombuffer(sections["raw"], dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.size != numel:
            raise PackError(f"raw section holds {arr.size} values, shape {shape} needs {numel}")
        return torch.from_numpy(arr.astype(dtype).reshape(shape).copy())
    bits = int(entry["bits"])
    rows = shape[0]
    cols = numel // rows
    storage, nnz = entry["storage"], int(entry["nnz"])
    n_values = numel if storage == "dense" else nnz
    encoding = entry["encoding"]
    if encoding not in ("quantized", "shared", "float"):
        raise PackError(f"unknown encoding {encoding!r}")
    if storage == "huffman":
        if encoding == "float":
            raise PackError("Huffman storage holds quantized or shared codes only")
        try:
            vlen = entropy_mod.decode_table(sections["vtable"])
            codes = entropy_mod.decode(sections["values"], nnz, vlen)
            gsym = entropy_mod.decode(sections["gaps"], int(entry["n_gaps"]),
                                      entropy_mod.decode_table(sections["gtable"]))
            runs = entropy_mod.runs_from_symbols(gsym, int(entry["escape"]))
        except entropy_mod.EntropyError as e:
            raise PackError(str(e)) from None
        if runs.size != nnz:
            raise PackError(f"the gap stream holds {runs.size} non-zeros, index says {nnz}")
        positions = np.cumsum(runs + 1) - 1
        if positions.size and positions[-1] >= numel:
            raise PackError("the gap stream runs past the end of the tensor")
    else:
        codes = None
        if encoding != "float":
            codes = unpack_bits(sections["codes"], n_values, bits).astype(np.int64)
    if encoding == "quantized":
        qmax = 2 ** (bits - 1) - 1
        vals = codes - qmax
        scales = np.frombuffer(sections["scales"], dtype="<f4")
        if scales.size != rows:
            raise PackError(f"{scales.size} scales for {rows} output channels")
    elif encoding == "shared":
        book = np.frombuffer(sections["codebook"], dtype="<f4").astype(np.float32)
        if codes.size and (book.size == 0 or codes.max() >= book.size):
            raise PackError(f"a code points past the {book.size}-entry codebook")
        vals = book[codes] if book.size else np.zeros(codes.size, dtype=np.float32)
    else:
        vals = np.frombuffer(sections["values"], dtype="<f4").astype(np.float32)
        if vals.size != n_values:
            raise PackError(f"{vals.size} values, expected {n_values}")
    if storage == "dense":
        full = vals.reshape(rows, cols)
    elif storage == "huffman":
        full = np.zeros(numel, dtype=vals.dtype)
        full[positions] = vals
        full = full.reshape(rows, cols)
    else:
        if storage == "bitmask":
            mask = unpack_bits(sections["mask"], numel, 1).astype(bool).reshape(rows, cols)
        elif storage == "csr":
            col = unpack_bits(sections["col"], nnz, col_bits(cols)).astype(np.int64)
            rowptr = np.frombuffer(sections["rowptr"], dtype="<u4").astype(np.int64)
            if rowptr.size != rows + 1 or rowptr[-1] != nnz or np.any(np.diff(rowptr) < 0) or np.any(col >= cols):
                raise PackError("malformed CSR index")
            mask = np.zeros((rows, cols), dtype=bool)
            mask[np.repeat(np.arange(rows), np.diff(rowptr)), col] = True
        else:
            raise PackError(f"unknown storage {storage!r}")
        if int(mask.sum()) != nnz:
            raise PackError(f"mask holds {int(mask.sum())} non-zeros, index says {nnz}")
        full = np.zeros((rows, cols), dtype=vals.dtype)
        full[mask] = vals
    if encoding == "quantized":
        q = torch.from_numpy(full.astype(np.float32).reshape(shape))
        s = torch.from_numpy(scales.astype(np.float32).copy()).reshape((-1,) + (1,) * (len(shape) - 1))
        return q * s  # the same float32 product as the fake quantizer: bit-identical weights
    return torch.from_numpy(full.astype(np.float32).reshape(shape).copy())


# --- a whole model ----------------------------------------------------------------------------------------

def pack_state(model: nn.Module, weight_bits: dict[str, int], scales: dict[str, torch.Tensor] | None = None,
               *, shared: dict[str, bool] | None = None, entropy: dict[str, bool] | None = None,
               ) -> tuple[bytes, dict[str, Any]]:
    """``(weights.bin bytes, index)`` for ``model``'s state dict.

    weight_bits: module name -> bits of its (compressed, baked) ``weight``; other tensors are stored raw.
    scales:      module name -> per-channel scale captured before baking (exact codes); derived when absent.
    shared:      module name -> k-means weight-shared (``CompressedModel.weight_sharing``)
    entropy:     module name -> Huffman coding allowed (``CompressedModel.entropy_coding``)
    """
    scales, shared, entropy = scales or {}, shared or {}, entropy or {}
    entries, blobs, offset = [], [], 0
    for name, tensor in model.state_dict().items():
        module, _, attr = name.rpartition(".")
        if attr == "weight" and module in weight_bits and tensor.is_floating_point():
            packed = pack_weight(tensor, weight_bits[module], scales.get(module),
                                 shared=shared.get(module, False), entropy=entropy.get(module, False))
        else:
            packed = pack_raw(tensor)
        entry = {"name": name, "offset": offset, **packed.entry}
        entry["nbytes"] = len(packed.data)
        entries.append(entry)
        blobs.append(packed.data)
        offset += len(packed.data)
    return b"".join(blobs), {"type": PACK_FORMAT, "version": PACK_VERSION, "nbytes": offset, "tensors": entries}


def unpack_state(data: bytes, index: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rebuild the state dict from ``weights.bin`` bytes and its index (raises :class:`PackError`)."""
    if index.get("type") != PACK_FORMAT or index.get("version") not in READABLE_VERSIONS:
        raise PackError(f"not a {PACK_FORMAT} index of a version this autocompress reads {READABLE_VERSIONS}")
    if index.get("nbytes") != len(data):
        raise PackError(f"weights file has {len(data)} bytes, its index says {index.get('nbytes')}")
    state = {}
    for entry in index["tensors"]:
        start = int(entry["offset"])
        sections = {}
        for kind, n in entry["sections"]:
            sections[kind] = data[start:start + int(n)]
            if len(sections[kind]) != int(n):
                raise PackError(f"{entry['name']}: section {kind} runs past the end of the file")
            start += int(n)
        try:
            state[entry["name"]] = _unpack_one(entry, sections)
        except (KeyError, ValueError) as e:
            raise PackError(f"{entry.get('name')}: {e}") from None
    return state


__all__ = ["pack_bits", "unpack_bits", "pack_weight", "pack_state", "unpack_state", "PackError"]
