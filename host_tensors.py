"""Host arrays that TensorFlow uses in place: a dataset split is touched
once, as the float32 array it is scaled into, and that array is the
split's tensor (no copy: touching a new split-sized array's pages for the
first time is most of a first trial's data time)."""

from __future__ import annotations

import numpy as np

TF_ALIGNMENT = 64  # bytes (EIGEN_MAX_ALIGN_BYTES with AVX-512)


def float32_copy(x: np.ndarray) -> np.ndarray:
    """x in float32, in a new C-ordered array whose data start on a
    64-byte boundary, the alignment TF's CPU kernels assume: `as_tensor`
    can then hand it to TF without a copy."""
    size = int(np.prod(x.shape)) * 4
    buffer = np.empty(size + TF_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TF_ALIGNMENT
    out = buffer[start:start + size].view(np.float32).reshape(x.shape)
    np.copyto(out, x, casting="unsafe")
    return out


def as_tensor(x: np.ndarray):
    """A TF tensor of x.  An aligned float32 array (`float32_copy`'s, never
    written after) becomes a tensor over its own memory (DLPack): no copy,
    and no first touch of another split-sized array's pages, which on
    MNIST costs more than the scaling.  Anything else is copied."""
    import tensorflow as tf
    if (x.dtype == np.float32 and x.flags.c_contiguous and x.size
            and x.ctypes.data % TF_ALIGNMENT == 0):
        return tf.experimental.dlpack.from_dlpack(x.__dlpack__())
    return tf.constant(x)
