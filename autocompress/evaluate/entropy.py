"""Canonical Huffman coding of a compressed weight's codes and of its sparse index (Han et al., ICLR 2016).

An entropy-coded weight (storage ``"huffman"``) is four byte-aligned sections:

- ``vtable``, ``values``: the value code (quantization level or codebook index) of every non-zero weight, in
  row-major order, Huffman-coded;
- ``gtable``, ``gaps``: the sparse index as run lengths: before each non-zero, the number ``g`` of zeros since
  the previous one, coded as symbols ``0 .. M``: ``M`` (the escape) means "``M`` zeros, no value follows" and is
  repeated while ``g >= M``, then ``g mod M`` follows. ``M`` is the cheapest of :data:`ESCAPES` for the tensor.
  Zeros after the last non-zero are implied by the shape.

A table is the canonical code's lengths: a uint16 alphabet size ``A`` then ``A`` lengths of 5 bits (0 = symbol
unused), so a code is rebuilt from its lengths alone. A stream whose alphabet has a single used symbol costs no
payload bits (its symbol count is in the index). Sizes are exact bit counts of what
:mod:`autocompress.export.pack` writes, computed from histograms without encoding, so the search can afford them.

Hand-written (about 100 lines) rather than a library: the size objective needs the encoded length from a
histogram in microseconds, the table must be the compact canonical form counted bit for bit, encoding and
decoding must be vectorized numpy (hundreds of thousands of symbols), and nothing may be pickled;
``dahuffman`` encodes symbol by symbol in Python and serializes its table with pickle.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

LENGTH_BITS = 5  # bits per code length in a table; lengths up to 31
MAX_CODE_LEN = 2**LENGTH_BITS - 1
ALPHABET_BITS = 16  # table header: the alphabet size
ESCAPES = (7, 15, 31, 63, 127, 255)  # run-length escape values M tried per tensor


class EntropyError(ValueError):
    """A Huffman section is malformed."""


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol (0 for an unused one; a lone used symbol gets length 1).

    Deterministic: ties are broken by the smallest symbol in a subtree, so the size objective and the packer
    always build the same code from the same histogram.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        ca, ka, a = heapq.heappop(heap)
        cb, kb, b = heapq.heappop(heap)
        for s in a:
            lengths[s] += 1
        for s in b:
            lengths[s] += 1
        heapq.heappush(heap, (ca + cb, min(ka, kb), a + b))
    if lengths.max() > MAX_CODE_LEN:
        raise EntropyError(f"a Huffman code of length {int(lengths.max())} exceeds {MAX_CODE_LEN} bits")
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of every symbol (MSB first), by (length, symbol) order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = sorted((int(lengths[s]), s) for s in np.flatnonzero(lengths))
    code, prev = 0, 0
    for i, (n, s) in enumerate(order):
        if i:
            code += 1
        code <<= n - prev
        prev = n
        codes[s] = code
    return codes


def alphabet_size(lengths: np.ndarray) -> int:
    used = np.flatnonzero(lengths)
    return int(used[-1]) + 1 if used.size else 0


def table_bits(lengths: np.ndarray) -> int:
    return ALPHABET_BITS + LENGTH_BITS * alphabet_size(lengths)


def payload_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Encoded bits of a stream with histogram ``counts`` (0 when a single symbol is used)."""
    if np.count_nonzero(counts) <= 1:
        return 0
    return int(np.dot(np.asarray(counts, dtype=np.int64), lengths))


def stream_bits(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """``(code lengths, table + payload bits)`` of a stream with histogram ``counts``."""
    lengths = code_lengths(counts)
    return lengths, table_bits(lengths) + payload_bits(counts, lengths)


def _bits_to_bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8), bitorder="big").tobytes()


def encode_table(lengths: np.ndarray) -> bytes:
    a = alphabet_size(lengths)
    head = np.array([(a >> (ALPHABET_BITS - 1 - i)) & 1 for i in range(ALPHABET_BITS)], dtype=np.uint8)
    lens = np.asarray(lengths[:a], dtype=np.int64)
    body = ((lens[:, None] >> np.arange(LENGTH_BITS - 1, -1, -1)) & 1).reshape(-1)
    return _bits_to_bytes(np.concatenate([head, body]))


def decode_table(buf: bytes) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="big").astype(np.int64)
    if bits.size < ALPHABET_BITS:
        raise EntropyError("Huffman table shorter than its header")
    a = int(bits[:ALPHABET_BITS] @ (1 << np.arange(ALPHABET_BITS - 1, -1, -1)))
    need = math.ceil((ALPHABET_BITS + LENGTH_BITS * a) / 8)
    if len(buf) != need:
        raise EntropyError(f"Huffman table of {a} symbols needs {need} bytes, but has {len(buf)}")
    body = bits[ALPHABET_BITS:ALPHABET_BITS + LENGTH_BITS * a].reshape(a, LENGTH_BITS)
    return body @ (1 << np.arange(LENGTH_BITS - 1, -1, -1))


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman-code ``symbols`` with the canonical code of ``lengths`` (MSB first, zero-padded to a byte)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if np.count_nonzero(lengths) <= 1:
        return b""
    if symbols.size and (symbols.max() >= len(lengths) or np.any(lengths[symbols] == 0)):
        raise EntropyError("a symbol has no code")
    codes, lens = canonical_codes(lengths)[symbols], lengths[symbols]
    total = int(lens.sum())
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    owner = np.repeat(np.arange(symbols.size), lens)
    shift = lens[owner] - 1 - (np.arange(total) - starts)
    return _bits_to_bytes((codes[owner] >> shift) & 1)


def decode(buf: bytes, n: int, lengths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: ``n`` symbols (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if used.size == 0:
        raise EntropyError("empty Huffman table for a non-empty stream")
    if used.size == 1:
        if buf:
            raise EntropyError("a single-symbol stream has no payload")
        return np.full(n, used[0], dtype=np.int64)
    width = int(lengths.max())
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="big").astype(np.int64)
    padded = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    # the `width` bits starting at every position, as an integer: one table lookup per symbol
    window = np.lib.stride_tricks.sliding_window_view(padded, width)[: bits.size] @ (
        1 << np.arange(width - 1, -1, -1))
    codes = canonical_codes(lengths)
    lut_sym = np.zeros(2**width, dtype=np.int64)
    lut_len = np.zeros(2**width, dtype=np.int64)
    for s in used:
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = lo + (1 << (width - int(lengths[s])))
        lut_sym[lo:hi], lut_len[lo:hi] = s, lengths[s]
    win, syms, lens = window.tolist(), lut_sym.tolist(), lut_len.tolist()
    out = [0] * n
    pos = 0
    try:
        for i in range(n):
            v = win[pos]
            out[i] = syms[v]
            pos += lens[v]
    except IndexError:
        raise EntropyError(f"Huffman stream ends before its {n} symbols") from None
    if pos > bits.size or math.ceil(pos / 8) != len(buf):
        raise EntropyError(f"Huffman stream has {len(buf)} bytes, its {n} symbols use {pos} bits")
    return np.asarray(out, dtype=np.int64)


# --- run lengths of zeros (the sparse index) -------------------------------------------------------------

def zero_runs(nonzero: np.ndarray) -> np.ndarray:
    """Zeros before each non-zero (since the previous one) of a flat boolean mask."""
    pos = np.flatnonzero(nonzero)
    return np.diff(pos, prepend=-1) - 1


def gap_symbols(runs: np.ndarray, escape: int) -> np.ndarray:
    """Run lengths -> symbols 0..escape (``escape`` repeated ``run // escape`` times, then ``run % escape``)."""
    runs = np.asarray(runs, dtype=np.int64)
    reps = runs // escape
    out = np.full(int(reps.sum()) + runs.size, escape, dtype=np.int64)
    last = np.cumsum(reps + 1) - 1  # each run ends with its remainder
    out[last] = runs % escape
    return out


def runs_from_symbols(symbols: np.ndarray, escape: int) -> np.ndarray:
    """Inverse of :func:`gap_symbols`."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size and symbols[-1] == escape:
        raise EntropyError("the gap stream ends with an escape")
    ends = np.flatnonzero(symbols != escape)
    esc_before = np.diff(ends, prepend=-1) - 1
    return esc_before * escape + symbols[ends]


def gap_counts(runs: np.ndarray, escape: int) -> np.ndarray:
    """Histogram of :func:`gap_symbols` without building the stream."""
    runs = np.asarray(runs, dtype=np.int64)
    counts = np.bincount(runs % escape, minlength=escape + 1)
    counts[escape] += int((runs // escape).sum())
    return counts


@dataclass(frozen=True)
class HuffmanLayout:
    """How one weight is entropy-coded, and its exact size in bits (tables + payloads, no scales/codebook)."""

    escape: int
    value_lengths: np.ndarray
    gap_lengths: np.ndarray
    n_gaps: int
    bits: int


def huffman_layout(values: np.ndarray, alphabet: int, runs: np.ndarray) -> HuffmanLayout:
    """The cheapest escape ``M`` for ``runs`` and the codes of ``values`` (symbols ``0 .. alphabet-1``)."""
    vlen, vbits = stream_bits(np.bincount(np.asarray(values, dtype=np.int64), minlength=alphabet))
    best = None
    for m in ESCAPES:
        counts = gap_counts(runs, m)
        glen, gbits = stream_bits(counts)
        if best is None or gbits < best[2]:
            best = (m, glen, gbits, int(counts.sum()))
    assert best is not None
    m, glen, gbits, n = best
    return HuffmanLayout(escape=m, value_lengths=vlen, gap_lengths=glen, n_gaps=n, bits=vbits + gbits)


__all__ = ["code_lengths", "canonical_codes", "encode", "decode", "encode_table", "decode_table", "stream_bits",
           "table_bits", "payload_bits", "zero_runs", "gap_symbols", "runs_from_symbols", "gap_counts",
           "huffman_layout", "HuffmanLayout", "EntropyError"]
