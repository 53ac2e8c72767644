"""Constant tensors that read their data only when asked.

Inline ONNX data stays in its TensorProto until `numpy()` is called; external data is
memory-mapped from the model's folder on first read (and streamed, never loaded, on export);
unchanged tensors are written back from their original bytes, so a round trip is bit-exact.
`safe_join` is the one place that decides whether an external-data location may be read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["ExternalRef", "Tensor", "dtype_to_numpy", "safe_join"]


def dtype_to_numpy(elem_type: int) -> np.dtype:
    """The numpy dtype ONNX Runtime uses for an ONNX element type."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


@dataclass(frozen=True)
class ExternalRef:
    """Where an external tensor's bytes live: an absolute, already validated path."""

    path: str
    offset: int
    length: int | None


class Tensor:
    """A constant tensor whose data is read only when someone asks for it."""

    __slots__ = ("name", "dtype", "dims", "_proto", "_external", "_array", "doc_string",
                 "_sparse")

    def __init__(self, name: str, dtype: int, dims: tuple[int, ...], *,
                 proto: onnx.TensorProto | None = None,
                 external: ExternalRef | None = None,
                 array: np.ndarray | None = None,
                 sparse: onnx.SparseTensorProto | None = None,
                 doc_string: str = "") -> None:
        self.name = name
        self.dtype = dtype
        self.dims = tuple(int(d) for d in dims)
        self._proto = proto
        self._external = external
        self._array = array
        self._sparse = sparse
        self.doc_string = doc_string

    @classmethod
    def from_numpy(cls, array: np.ndarray, name: str = "") -> Tensor:
        array = np.asarray(array)
        elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        return cls(name, elem, array.shape, array=array)

    @property
    def external(self) -> ExternalRef | None:
        return self._external

    @property
    def is_sparse(self) -> bool:
        return self._sparse is not None

    @property
    def size(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        if self.dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                          onnx.TensorProto.FLOAT4E2M1):
            return (self.size + 1) // 2
        if self.dtype == onnx.TensorProto.STRING:
            return self.size * 8
        return self.size * dtype_to_numpy(self.dtype).itemsize

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (memory-mapped, read-only, for external data)."""
        if self._array is not None:
            return self._array
        if self._sparse is not None:
            self._array = numpy_helper.to_array(self._sparse_to_dense())
            return self._array
        if self._external is not None:
            ref = self._external
            dt = dtype_to_numpy(self.dtype)
            if self.dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
                              onnx.TensorProto.FLOAT4E2M1, onnx.TensorProto.STRING):
                return numpy_helper.to_array(self.to_proto(inline=True))
            if self.size == 0:
                return np.zeros(self.dims, dt)
            mm = np.memmap(ref.path, dtype=dt, mode="r", offset=ref.offset, shape=self.dims)
            return mm
        assert self._proto is not None
        self._array = numpy_helper.to_array(self._proto)
        return self._array

    def _sparse_to_dense(self) -> onnx.TensorProto:
        sp = self._sparse
        assert sp is not None
        values = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices)
        dense = np.zeros(self.dims, dtype=values.dtype)
        flat = dense.reshape(-1)
        if idx.ndim == 1:
            flat[idx] = values
        else:
            flat[np.ravel_multi_index(tuple(idx.T), self.dims)] = values
        return numpy_helper.from_array(dense, self.name)

    def read_bytes(self) -> bytes:
        """Raw little-endian bytes as ONNX stores them."""
        if self._external is not None and self._array is None:
            ref = self._external
            with open(ref.path, "rb") as f:
                f.seek(ref.offset)
                return f.read(ref.length if ref.length is not None else self.nbytes)
        return self.to_proto(inline=True).raw_data

    def to_proto(self, inline: bool = True) -> onnx.TensorProto:
        """The TensorProto; the original bytes are reused when the tensor was not changed."""
        if self._array is not None and self._proto is None:
            proto = numpy_helper.from_array(np.require(self._array, requirements="C"), self.name)
            if proto.data_type != self.dtype:
                proto.data_type = self.dtype
        elif self._proto is not None:
            if self._proto.name == self.name:
                proto = self._proto
            else:
                proto = onnx.TensorProto()
                proto.CopyFrom(self._proto)
                proto.name = self.name
        elif self._external is not None:
            proto = onnx.TensorProto(name=self.name, data_type=self.dtype, dims=self.dims)
            if inline:
                proto.raw_data = self.read_bytes()
        else:
            proto = self._sparse_to_dense()
        if self.doc_string and not proto.doc_string:
            proto.doc_string = self.doc_string
        return proto

    def sparse_proto(self) -> onnx.SparseTensorProto:
        assert self._sparse is not None
        if self._sparse.values.name != self.name:
            sp = onnx.SparseTensorProto()
            sp.CopyFrom(self._sparse)
            sp.values.name = self.name
            return sp
        return self._sparse

    def __repr__(self) -> str:
        where = "external" if self._external else "inline"
        return f"Tensor({self.name!r}, {onnx.TensorProto.DataType.Name(self.dtype)}, " \
               f"{list(self.dims)}, {where})"



def safe_join(base_dir: str, location: str, tensor_name: str) -> str:
    """Resolve an external-data location inside `base_dir`, or refuse."""
    from compiler.errors import ExternalDataError

    if os.path.isabs(location) or location.startswith(("/", "\\")) or (
            len(location) > 1 and location[1] == ":"):
        raise ExternalDataError(
            f"tensor {tensor_name!r} points at absolute external-data path {location!r}; "
            "edgec only reads weights from files inside the model's folder")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, full]) != base:
        raise ExternalDataError(
            f"tensor {tensor_name!r} points at external data {location!r}, outside the model's "
            f"folder {base_dir!r}; move the data file next to the model")
    return full
