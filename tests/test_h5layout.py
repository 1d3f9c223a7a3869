"""The H5 writer whose array bytes bypass h5py gives the file h5py gives with the same data."""

from __future__ import annotations

import h5py
import ml_dtypes
import numpy as np

from vitkit.models.h5layout import H5Group, write_h5


def contents(path) -> dict[str, tuple]:
    with h5py.File(path, "r") as handle:
        found = {"/": (dict(handle.attrs),)}

        def visit(name, item):
            attrs = dict(item.attrs)
            found[name] = (attrs, item.dtype.str, item.shape, item[()].tobytes()) if isinstance(item, h5py.Dataset) \
                else (attrs,)
        handle.visititems(visit)
    return found


def test_every_kind_of_array_lands_as_h5py_writes_it(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "matrix": rng.standard_normal((37, 41)).astype("float32"),
        "scalar": np.array(2.5, dtype="float32"),
        "counts": np.arange(7, dtype="int64"),
        "bytes": rng.integers(0, 255, 9, dtype=np.uint8),
        "halves": rng.standard_normal((3, 5)).astype("float16"),
        "empty": np.zeros((0, 4), "float32"),
        "flags": np.array([True, False, True]),
        "bfloat16": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "strided": rng.standard_normal((8, 6))[:, ::2],  # not contiguous in memory
        "swapped": np.arange(4, dtype=">i4"),  # not in this machine's byte order
    }
    write_h5(tmp_path / "ours.h5", [H5Group("layers/dense/vars", {"name": "dense"}, arrays, {"bfloat16": {"dtype": "bfloat16"}}),
                                    H5Group("vars", {}, {"0": arrays["matrix"][:3]}),
                                    H5Group("empty_group", {}, {})], {"root": "{}"})
    with h5py.File(tmp_path / "reference.h5", "w") as handle:
        handle.attrs["root"] = "{}"
        group = handle.create_group("layers/dense/vars")
        group.attrs["name"] = "dense"
        for name, array in arrays.items():
            group[name] = array
        group["bfloat16"].attrs["dtype"] = "bfloat16"
        handle.create_group("vars")["0"] = arrays["matrix"][:3]
        handle.create_group("empty_group")
    assert contents(tmp_path / "ours.h5") == contents(tmp_path / "reference.h5")
    with h5py.File(tmp_path / "ours.h5", "r") as handle:
        np.testing.assert_array_equal(handle["layers/dense/vars/strided"][()], arrays["strided"])
        np.testing.assert_array_equal(handle["layers/dense/vars/swapped"][()], arrays["swapped"])


def test_a_file_is_replaced_not_appended_to(tmp_path):
    path = tmp_path / "f.h5"
    write_h5(path, [H5Group("a", {}, {"x": np.ones(1000, "float32")})])
    write_h5(path, [H5Group("b", {}, {"y": np.full(3, 7.0, "float32")})])
    assert set(contents(path)) == {"/", "b", "b/y"}
