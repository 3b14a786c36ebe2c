"""Sub-network rules: which heads, FFN neurons and layers a (width, depth) keeps.

A :class:`SubNet` is a small frozen, hashable value. It is passed to the model as a
*static* argument, so every distinct sub-network compiles its own executable with its
own (smaller) static shapes, and a sub-network really computes only what it keeps.

The rules are those of the official DynaBERT code (``transformers/modeling_bert.py``
of ``huawei-noah/Pretrained-Language-Model``; see ``../shared/spec/dynabert-reference.md``
sections 1 and 2):

* heads kept ``h = round(H * width)`` with Python's round-half-to-even;
* FFN neurons kept ``int(h / H * F)`` (the FFN width is quantised to whole heads);
* layers kept ``D = round(L * depth)``, with original indices ``floor(i / depth)`` for
  ``i < D``;
* the student's hidden state ``m`` (0 = embeddings) is distilled from the teacher's
  hidden state ``[floor(i / depth) for i < D] + [L]``, i.e. the teacher's output at the
  end of the block of layers the student layer replaces.

Because rewiring puts the most important heads and neurons first, a sub-network always
keeps a *prefix* of the heads and neurons of every layer it keeps.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Protocol, Tuple

import numpy as np

#: The width and depth grids trained by the official code (stage 1: widths at depth 1;
#: stages 2 and 3: every (width, depth) pair).
WIDTHS: Tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
DEPTHS: Tuple[float, ...] = (1.0, 0.75, 0.5)


class _EncoderShape(Protocol):
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


def _check_multiplier(name: str, value) -> float:
    """Validate a width or depth and return it as a plain Python ``float``.

    Any real number is accepted (``int``, ``float``, ``numpy.float32``, ``numpy.int64``,
    ...), but not ``bool`` (``True`` is almost surely a mistake). The value is stored as
    ``float(value)``, so a SubNet hashes and compares equal whatever type it was built
    from: it is a jit static argument, and ``SubNet(np.float32(0.5))`` must reuse the
    executable of ``SubNet(0.5)``. ``float()`` is exact, not rounded to the nearest
    decimal: ``np.float32(0.1)`` becomes 0.10000000149011612, a different SubNet from
    ``SubNet(0.1)`` (the grid's 0.25, 0.5 and 0.75 are exact in float32).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"SubNet {name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(
            f"SubNet {name}={value!r} is out of range: {name} must lie in (0, 1] "
            f"(the trained grid uses {name}s "
            f"{WIDTHS if name == 'width' else DEPTHS})"
        )
    return value


@dataclasses.dataclass(frozen=True)
class SubNet:
    """A (width, depth) sub-network of a DynaBERT model.

    Args:
      width: fraction of attention heads (and, tied to it, FFN neurons) kept, in (0, 1].
      depth: fraction of layers kept, in (0, 1].

    ``SubNet(0.5, 0.75)`` on a 12-layer, 12-head BERT keeps 6 heads, 1536 FFN neurons
    and layers 0, 1, 2, 4, 5, 6, 8, 9, 10. Whether a width or depth keeps at least one
    head or layer depends on the model, so that is checked by the methods that take a
    config (and by the model), with a ``ValueError`` that lists the allowed values.
    """

    width: float = 1.0
    depth: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "width", _check_multiplier("width", self.width))
        object.__setattr__(self, "depth", _check_multiplier("depth", self.depth))

    # -- width ---------------------------------------------------------------------
    def num_heads(self, config: _EncoderShape) -> int:
        """Heads kept per layer: ``round(H * width)`` (half to even)."""
        heads = round(config.num_attention_heads * self.width)
        if heads < 1:
            smallest = 0.5 / config.num_attention_heads
            raise ValueError(
                f"width={self.width} keeps no attention head of "
                f"{config.num_attention_heads} (round({config.num_attention_heads} * "
                f"{self.width}) = 0); widths must keep at least one head: use a width "
                f"> {smallest:g} (exactly {smallest:g} rounds to 0 as well)"
            )
        return heads

    def ffn_size(self, config: _EncoderShape) -> int:
        """FFN neurons kept per layer: ``int(heads / H * F)``, at least 1."""
        heads = self.num_heads(config)
        return max(1, int(heads / config.num_attention_heads * config.intermediate_size))

    # -- depth ---------------------------------------------------------------------
    def num_layers(self, config: _EncoderShape) -> int:
        """Layers kept: ``round(L * depth)`` (half to even)."""
        layers = round(config.num_hidden_layers * self.depth)
        if layers < 1:
            smallest = 0.5 / config.num_hidden_layers
            raise ValueError(
                f"depth={self.depth} keeps no layer of {config.num_hidden_layers} "
                f"(round({config.num_hidden_layers} * {self.depth}) = 0); depths must "
                f"keep at least one layer: use a depth > {smallest:g}"
            )
        return layers

    def kept_layers(self, config: _EncoderShape) -> Tuple[int, ...]:
        """Original (0-based) indices of the kept layers, in order: ``floor(i/depth)``."""
        return tuple(int(i / self.depth) for i in range(self.num_layers(config)))

    def teacher_hidden_indices(self, config: _EncoderShape) -> Tuple[int, ...]:
        """For each student hidden state (embeddings first), the teacher's index.

        The teacher has ``L + 1`` hidden states (embeddings, then one per layer). The
        student's state ``m`` is matched to the teacher's state ``T[m]`` with
        ``T = [floor(i / depth) for i < D] + [L]``.
        """
        return self.kept_layers(config) + (config.num_hidden_layers,)

    # -- convenience ---------------------------------------------------------------
    def validate(self, config: _EncoderShape) -> "SubNet":
        """Raise ``ValueError`` if this sub-network keeps nothing of ``config``."""
        self.num_heads(config)
        self.num_layers(config)
        return self

    def is_full(self, config: _EncoderShape) -> bool:
        return (
            self.num_heads(config) == config.num_attention_heads
            and self.ffn_size(config) == config.intermediate_size
            and self.num_layers(config) == config.num_hidden_layers
        )

    @property
    def name(self) -> str:
        """A short, file-name-safe label such as ``w0.5_d0.75``."""
        return f"w{self.width:g}_d{self.depth:g}"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"SubNet(width={self.width:g}, depth={self.depth:g})"


FULL = SubNet(1.0, 1.0)


def grid(widths=WIDTHS, depths=DEPTHS) -> Tuple[SubNet, ...]:
    """All (width, depth) sub-networks, in the official training order.

    The official loop runs depths (outer) and widths (inner), both from large to small:
    (w=1, d=1), (w=.75, d=1), ..., (w=.25, d=.5).
    """
    widths = [_check_multiplier("width", w) for w in widths]   # before sorting them
    depths = [_check_multiplier("depth", d) for d in depths]
    return tuple(
        SubNet(w, d)
        for d in sorted(depths, reverse=True)
        for w in sorted(widths, reverse=True)
    )
