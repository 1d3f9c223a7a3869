"""Many short texts (image paths, display names) in two NumPy arrays instead of one object each.

A Python ``str`` or ``Path`` costs 60 to 500 bytes beside its characters; at 100,000 rows that is
tens of megabytes of bookkeeping. A :class:`TextArray` keeps the UTF-8 bytes of every text end to
end in one ``uint8`` array and where each ends in one ``int64`` array, so a row costs its length
plus 8 bytes. Unlike a fixed-width NumPy string array, one long path does not widen every row.
"""

from __future__ import annotations

from array import array
from typing import Iterable, Iterator, Sequence, overload

import numpy as np

# Lone surrogates (file names that are not valid UTF-8, as Python decodes them) survive the round trip.
_ERRORS = "surrogatepass"


class TextArray(Sequence[str]):
    """An immutable sequence of texts; items come back as ``str``, slices and index arrays as TextArrays.

    Compares equal to any sequence of the same texts, so it stands in for a list of strings.

    Example:
        >>> names = TextArray.from_texts(["a.png", "b.png"])
        >>> names[1], names == ["a.png", "b.png"], names.nbytes
        ('b.png', True, 26)
    """

    def __init__(self, data: np.ndarray, ends: np.ndarray):
        """``data``: the UTF-8 bytes of all texts end to end; ``ends[i]``: where text ``i`` ends in it."""
        self.data = np.asarray(data, dtype=np.uint8)
        self.ends = np.asarray(ends, dtype=np.int64)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "TextArray":
        """The texts of any iterable, consumed one at a time (no list of them is made)."""
        builder = TextArrayBuilder()
        for text in texts:
            builder.append(text)
        return builder.build()

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def nbytes(self) -> int:
        """Memory held by the two arrays."""
        return self.data.nbytes + self.ends.nbytes

    def encoded(self, index: int) -> bytes:
        """The UTF-8 bytes of text ``index`` (non-negative)."""
        start = int(self.ends[index - 1]) if index else 0
        return self.data[start:int(self.ends[index])].tobytes()

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> "TextArray": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        if not isinstance(index, (int, np.integer)):
            return self.take(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} texts")
        return self.encoded(int(index) % len(self)).decode("utf-8", _ERRORS)

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self.ends.tolist():
            yield self.data[start:end].tobytes().decode("utf-8", _ERRORS)
            start = end

    def take(self, indices: Iterable[int] | np.ndarray) -> "TextArray":
        """The texts at ``indices`` (positions, or a boolean mask), in that order."""
        positions = np.asarray(indices)
        positions = np.flatnonzero(positions) if positions.dtype == bool else positions.astype(np.int64).reshape(-1)
        if positions.size and not (-len(self) <= positions.min() and positions.max() < len(self)):
            raise IndexError(f"indices out of range for {len(self)} texts")
        positions = positions % max(len(self), 1)
        starts = np.where(positions > 0, self.ends[positions - 1], 0)
        lengths = self.ends[positions] - starts
        out = bytearray(int(lengths.sum()))
        target, source = memoryview(out), memoryview(self.data)
        written = 0
        for start, length in zip(starts.tolist(), lengths.tolist()):
            target[written:written + length] = source[start:start + length]
            written += length
        return TextArray(np.frombuffer(out, dtype=np.uint8), np.cumsum(lengths))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TextArray):
            return np.array_equal(self.ends, other.ends) and np.array_equal(self.data, other.data)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # like a list: equal to lists, so not hashable

    def __repr__(self) -> str:
        shown = ", ".join(repr(text) for text in self.take(range(min(len(self), 3))))
        return f"TextArray([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} texts)"


class TextArrayBuilder:
    """Collects texts one by one into a growing byte buffer; :meth:`build` makes the TextArray."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("q")

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, text: str) -> None:
        self._data += text.encode("utf-8", _ERRORS)
        self._ends.append(len(self._data))

    def build(self) -> TextArray:
        """The texts so far (the builder's buffers are handed over, not copied: do not append after)."""
        return TextArray(np.frombuffer(self._data, dtype=np.uint8), np.frombuffer(self._ends, dtype=np.int64))
