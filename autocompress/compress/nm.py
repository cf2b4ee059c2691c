"""N:M semi-structured sparsity (2:4, 4:8): in every group of M consecutive weights along the input dimension, the
N largest magnitudes are kept and the rest zeroed.

The layout sparse tensor cores run (NVIDIA's 2:4 sparse MMA, cuSPARSELt): a GPU backend with those kernels
halves the matrix product. The CPU backends here have no N:M kernels, so on them the zeros only make the stored
weights smaller (the size objective and export read the zeros; latency is what the dense kernels measure).

The mask is fixed when the plan is applied (on the teacher's weights after channel pruning and low rank), before
magnitude pruning, which then zeroes its share of the weights N:M kept (so both hold, and the layer keeps exactly
(N/M) x (1 - sparsity) of its weights); fine-tuning keeps the mask. Groups run along the flattened input dimension
(``in_features``, or ``in_channels x kernel`` for a convolution, in PyTorch's memory order); a layer whose input
dimension is not a multiple of M is left dense and reported.
"""

from __future__ import annotations

import math

import torch

from .method import Knob, Method

PATTERNS = {"2:4": (2, 4), "4:8": (4, 8)}


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """0/1 mask keeping the ``n`` largest magnitudes of every ``m`` consecutive weights of each output row."""
    rows = weight.shape[0]
    flat = weight.detach().reshape(rows, -1, m).abs()
    keep = torch.zeros_like(flat)
    keep.scatter_(2, flat.topk(n, dim=2, sorted=False).indices, 1.0)
    return keep.reshape(weight.shape).to(weight.dtype)


class NMSparsity(Method):
    name = "nm_sparsity"
    knobs = (Knob(name="nm", type=str, default="dense", choices=("dense", *PATTERNS),
                  doc="N:M semi-structured sparsity: in each group of M consecutive input weights keep the N "
                      "largest ('2:4', '4:8'; quote them in YAML), 'dense' = off", label=lambda v: f"nm{v}"),)

    def skip(self, values, weight_shape) -> str | None:
        """Why the layer stays dense (its input dimension is not a multiple of M), or None."""
        _, m = PATTERNS[values["nm"]]
        fan_in = math.prod(weight_shape[1:])
        if fan_in % m:
            return f"N:M sparsity {values['nm']} not applied: input dimension {fan_in} is not a multiple of {m}"
        return None

    def weight_mask(self, weight, values, mask):
        if values["nm"] == "dense":
            return None
        why = self.skip(values, tuple(weight.shape))
        return why if why else nm_mask(weight, *PATTERNS[values["nm"]])

    def density(self, values, weight_shape):
        if values["nm"] == "dense" or self.skip(values, weight_shape):
            return 1.0
        n, m = PATTERNS[values["nm"]]
        return n / m


__all__ = ["NMSparsity", "nm_mask", "PATTERNS"]
