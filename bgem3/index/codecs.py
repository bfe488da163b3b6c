"""How vectors are stored: ColBERT codecs (float32 / float16 / int8 / 2bit / 1bit) and dense storage.

Quantised ColBERT codecs (``int8``, ``2bit``, ``1bit``) follow RaBitQ / TurboQuant: each token
vector ``x`` is centred on one global mean ``mu`` and turned by one random orthogonal matrix ``R``
(so every coordinate of ``y = R (x - mu)`` carries about the same energy and is close to
Gaussian), ``y`` is scalar-quantised to codes ``L`` (``sign(y)``; two bits with the Lloyd-Max
levels of a Gaussian; or int8 of ``y / max|y|``), and ONE float per token is kept,
``a = |y|^2 / <L, y>``. The inner product with a query token ``q`` is then estimated as

    <q, x>  ~  <q, mu> + a * <R q, L>

which is exact when ``q`` is ``x`` itself and unbiased for a random rotation (RaBitQ's
estimator ``<o_bar, q> / <o_bar, o>`` written for un-normalised ``y``). ``R`` and ``mu`` are
fitted once, on the first vectors the index receives, and saved with the index.

Bytes per token at ``dim = 1024`` in a saved segment: float32 4096, float16 2048, int8 1092 (1028 +
the estimate's 64 columns), 2bit 260, 1bit 140 (132 + 8).

Example::

    >>> import numpy as np
    >>> from bgem3.index.codecs import make_colbert_codec
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 32)).astype("float32"); x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> codec = make_colbert_codec("int8", 32)
    >>> codec.fit(x)
    >>> codes, aux = codec.encode(x)
    >>> sims = codec.similarities(codec.prepare_query(x[:2]), codes, aux)
    >>> bool(np.abs(sims - x[:2] @ x.T).max() < 0.02), codec.bytes_per_token()
    (True, 36)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["COLBERT_CODECS", "DENSE_CODECS", "ColbertCodec", "make_colbert_codec", "bytes_per_token",
           "dense_bits", "FLOAT16_MAX"]

COLBERT_CODECS = ("float32", "float16", "int8", "2bit", "1bit")
DENSE_CODECS = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
#: below this many tokens the first batch is too small to estimate a useful centre: mu = 0
MIN_TOKENS_FOR_CENTER = 1000

#: document tokens scored per step of :meth:`ColbertCodec.maxsim` (float32 levels: 4 MiB at 1024-d)
MAXSIM_STEP_TOKENS = 1024
#: below this many coordinates :meth:`ColbertCodec.maxsim` lays the similarities out query-token-major
TRANSPOSED_MAXSIM_DIMS = 256
#: the MaxSim estimate's coordinates (see ``ColbertCodec.prefix_dims``)
PREFIX_MIN_DIMS = 48
PREFIX_SHARE = 16

# Lloyd-Max quantiser of a standard Gaussian with 4 levels: thresholds 0, +-0.9816; levels.
_LM2_T = 0.9816
_LM2_LEVELS = np.array([-1.5104, -0.4528, 0.4528, 1.5104], dtype=np.float32)


def _byte_table(bits: int) -> np.ndarray:
    """``[256, 8 // bits]`` float32: the levels packed in each byte value (low bits first)."""
    per = 8 // bits
    b = np.arange(256, dtype=np.int64)[:, None]
    codes = (b >> (bits * np.arange(per)[None, :])) & ((1 << bits) - 1)
    if bits == 1:
        return np.where(codes == 1, 1.0, -1.0).astype(np.float32)
    return _LM2_LEVELS[codes]


_TABLE1 = _byte_table(1)
_TABLE2 = _byte_table(2)


def bytes_per_token(codec: str, dim: int, *, saved: bool = True) -> int:
    """Bytes per ColBERT token vector for ``codec`` at ``dim``: codes + per-token float, and in a
    saved segment (``saved=True``) the estimate's columns kept apart (``col_prefix``: 8 bytes for
    1bit, 64 for int8 at 1024-d; see :meth:`ColbertCodec.stored_prefix_cols`).

    >>> [bytes_per_token(c, 1024) for c in COLBERT_CODECS]
    [4096, 2048, 1092, 260, 140]
    >>> [bytes_per_token(c, 1024, saved=False) for c in COLBERT_CODECS]
    [4096, 2048, 1028, 260, 132]
    """
    if codec == "float32":
        return 4 * dim
    if codec == "float16":
        return 2 * dim
    if codec not in COLBERT_CODECS:
        raise ValueError(f"unknown ColBERT codec {codec!r}; choose one of {list(COLBERT_CODECS)}")
    codes = {"int8": dim, "2bit": (dim + 3) // 4, "1bit": (dim + 7) // 8}[codec]
    prefix = (ColbertCodec(codec, dim).stored_prefix_cols() or 0) if saved else 0
    return codes + 4 + prefix


def dense_bits(x: np.ndarray) -> np.ndarray:
    """Sign bits of dense vectors ``[N, D]`` packed to ``uint8 [N, ceil(D/8)]`` (the Hamming prefilter)."""
    return np.packbits(np.asarray(x) > 0, axis=1)


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal ``[dim, dim]`` float32 matrix (QR of a Gaussian, signs fixed)."""
    g = np.random.default_rng(seed).standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.diag(r))[None, :]
    return np.ascontiguousarray(q.T, dtype=np.float32)


class ColbertCodec:
    """One ColBERT codec for vectors of ``dim`` values.

    ``encode`` turns float32 ``[T, dim]`` into ``(codes, aux)`` (``aux`` is the per-token float
    ``a`` of the quantised codecs, ``None`` for float32/float16); ``prepare_query`` +
    ``similarities`` give the estimated ``[Tq, T]`` inner products; ``decode`` the approximate
    vectors. ``params()`` are the arrays to save (rotation, centre); ``from_params`` restores.
    """

    def __init__(self, name: str, dim: int, rotation: Optional[np.ndarray] = None,
                 center: Optional[np.ndarray] = None) -> None:
        if name not in COLBERT_CODECS:
            raise ValueError(f"unknown ColBERT codec {name!r}; choose one of {list(COLBERT_CODECS)}")
        self.name = name
        self.dim = int(dim)
        self.rotation = rotation
        self.center = center

    # ---------------------------------------------------------------- description
    @property
    def quantized(self) -> bool:
        return self.name in ("int8", "2bit", "1bit")

    @property
    def fitted(self) -> bool:
        return not self.quantized or self.rotation is not None

    def bytes_per_token(self) -> int:
        return bytes_per_token(self.name, self.dim)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype({"float32": np.float32, "float16": np.float16, "int8": np.int8}.get(self.name, np.uint8))

    @property
    def code_width(self) -> int:
        """Columns of the codes array."""
        if self.name in ("float32", "float16", "int8"):
            return self.dim
        return (self.dim + 3) // 4 if self.name == "2bit" else (self.dim + 7) // 8

    def params(self) -> dict[str, np.ndarray]:
        if not self.quantized or self.rotation is None:
            return {}
        return {"rotation": self.rotation, "center": self.center}

    @classmethod
    def from_params(cls, name: str, dim: int, params: dict[str, np.ndarray]) -> "ColbertCodec":
        codec = cls(name, dim)
        if codec.quantized:
            rot, center = params.get("rotation"), params.get("center")
            if rot is None or center is None:
                raise ValueError(f"the {name} codec needs its rotation and center arrays")
            if rot.shape != (dim, dim) or center.shape != (dim,):
                raise ValueError(f"codec arrays have shapes {rot.shape} and {center.shape}; expected ({dim}, {dim}) "
                                 f"and ({dim},)")
            rot = np.asarray(rot, dtype=np.float32)
            center = np.asarray(center, dtype=np.float32)
            if not (np.isfinite(rot).all() and np.isfinite(center).all()):
                raise ValueError("codec arrays contain NaN or infinity")
            if np.abs(rot @ rot.T - np.eye(dim, dtype=np.float32)).max() > 1e-3:
                raise ValueError("the codec rotation is not orthogonal")
            codec.rotation, codec.center = rot, center
        return codec

    # ---------------------------------------------------------------- fitting / encoding
    def fit(self, sample: np.ndarray, seed: int = 0) -> None:
        """Choose the rotation and centre from the first vectors (no-op for float codecs or once fitted)."""
        if self.fitted:
            return
        sample = np.asarray(sample, dtype=np.float32)
        if len(sample) >= MIN_TOKENS_FOR_CENTER:
            self.center = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        else:
            self.center = np.zeros(self.dim, dtype=np.float32)
        self.rotation = random_rotation(self.dim, seed)

    def check_values(self, x: np.ndarray) -> None:
        """Refuse values the codec cannot represent (float16 overflows above 65504)."""
        if self.name == "float16" and len(x):
            peak = float(np.abs(x).max())
            if peak > FLOAT16_MAX:
                raise ValueError(f"a ColBERT value of magnitude {peak:.6g} does not fit colbert_codec='float16' "
                                 f"(largest finite value {FLOAT16_MAX:g}); use colbert_codec='float32' or "
                                 "normalise the vectors")

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        x = np.asarray(x, dtype=np.float32)
        if self.name == "float32":
            return np.ascontiguousarray(x), None
        if self.name == "float16":
            self.check_values(x)
            return x.astype(np.float16), None
        if not self.fitted:
            raise RuntimeError("the codec is not fitted; call fit() with sample vectors first")
        y = (x - self.center) @ self.rotation.T
        yy = np.einsum("ij,ij->i", y, y)
        if self.name == "int8":
            peak = np.abs(y).max(axis=1)
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            codes = np.clip(np.rint(y / scale[:, None]), -127, 127).astype(np.int8)
            levels_dot = np.einsum("ij,ij->i", codes.astype(np.float32), y)
        elif self.name == "2bit":
            t = (_LM2_T * np.sqrt(yy / self.dim)).astype(np.float32)[:, None]
            c = (y > -t).astype(np.uint8) + (y > 0) + (y > t)
            levels_dot = np.einsum("ij,ij->i", _LM2_LEVELS[c], y)
            pad = (-self.dim) % 4
            if pad:
                c = np.concatenate([c, np.zeros((len(c), pad), np.uint8)], axis=1)
            c = c.reshape(len(c), -1, 4)
            codes = (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).astype(np.uint8)
        else:  # 1bit
            pos = y > 0
            codes = np.packbits(pos, axis=1, bitorder="little")
            levels_dot = np.abs(y).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(levels_dot > 1e-30, yy / levels_dot, 0.0).astype(np.float32)
        return np.ascontiguousarray(codes), a

    # ---------------------------------------------------------------- scoring
    def levels(self, codes: np.ndarray) -> np.ndarray:
        """The codes as float32 levels ``[T, dim]`` (in the rotated space for quantised codecs)."""
        if self.name in ("float32", "float16", "int8"):
            return np.asarray(codes).astype(np.float32, copy=False)
        table = _TABLE2 if self.name == "2bit" else _TABLE1
        out = table[np.asarray(codes)]
        return out.reshape(len(codes), -1)[:, : self.dim]

    def prepare_query(self, q: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        q = np.asarray(q, dtype=np.float32)
        if not self.quantized:
            return q, None
        return np.ascontiguousarray(q @ self.rotation.T), q @ self.center

    def similarities(self, prepared: tuple[np.ndarray, Optional[np.ndarray]], codes: np.ndarray,
                     aux: Optional[np.ndarray]) -> np.ndarray:
        """Estimated ``[Tq, T]`` inner products of the prepared query tokens with the coded tokens."""
        qr, qmu = prepared
        if self.name == "1bit":  # <q, 2b - 1> = 2 <q, b> - sum(q), with b in {0, 1} unpacked
            b = np.unpackbits(np.asarray(codes), axis=1, count=self.dim, bitorder="little")
            sims = 2.0 * (qr @ b.T.astype(np.float32)) - qr.sum(axis=1, keepdims=True)
        else:
            sims = qr @ self.levels(codes).T
        if self.quantized:
            sims *= np.asarray(aux, dtype=np.float32)[None, :]
            sims += qmu[:, None]
        return sims

    def _levels_into(self, codes: np.ndarray, out: np.ndarray) -> None:
        """The codes as float32 levels written into ``out [T, d]`` (the first ``d`` coordinates; no
        temporary float array)."""
        d = out.shape[1]
        if self.name == "1bit":
            np.copyto(out, np.unpackbits(codes, axis=1, count=d, bitorder="little"))
        elif self.name == "2bit":
            out[:] = _TABLE2[codes].reshape(len(codes), -1)[:, :d]
        else:
            np.copyto(out, codes[:, :d])

    def prefix_dims(self) -> int:
        """Coordinates the cheap MaxSim estimate (:meth:`maxsim` with ``prefix=True``) reads: the
        first ``max(PREFIX_MIN_DIMS, dim / PREFIX_SHARE)`` rotated coordinates (after the random
        rotation each carries about the same share of every inner product), at most half of them,
        a multiple of 8 so 1- and 2-bit codes cut at a byte: 64 of 1024, 48 of 384, 32 of 64."""
        if not self.quantized or self.dim < 64:
            return self.dim
        return min(self.dim // 2, max(PREFIX_MIN_DIMS, self.dim // PREFIX_SHARE)) // 8 * 8

    def prefix_cols(self) -> Optional[int]:
        """Code columns that hold the :meth:`prefix_dims` coordinates (8 of 128 for 1-bit codes at
        1024-d; a saved segment keeps them as a separate array, ``col_prefix``, so the estimate reads
        8 bytes a token); ``None`` when the estimate reads every coordinate."""
        d = self.prefix_dims()
        if d >= self.dim:
            return None
        return {"1bit": d // 8, "2bit": d // 4}.get(self.name, d)

    def stored_prefix_cols(self) -> Optional[int]:
        """:meth:`prefix_cols` for the codecs whose saved segments keep ``col_prefix``: ``1bit``
        (8 more bytes a token at 1024-d: 140 in all) and ``int8`` (64 more: 1092); not ``2bit``,
        whose 260 bytes a token would become 276, past its budget of 272 (its estimate slices the
        full codes, read for every candidate)."""
        return self.prefix_cols() if self.name in ("1bit", "int8") else None

    def maxsim(self, prepared: tuple[np.ndarray, Optional[np.ndarray]], codes: np.ndarray, aux: Optional[np.ndarray],
               lens: np.ndarray, *, prefix: bool = False, step: int = MAXSIM_STEP_TOKENS) -> np.ndarray:
        """ColBERT MaxSim (mean over query tokens of the max over a document's tokens) of the
        prepared query against documents whose coded tokens are concatenated in ``codes``/``aux``
        (``lens[i]`` tokens each); ``float32 [len(lens)]``, 0 for a document without tokens.

        Works through ``step`` tokens at a time (cut at document boundaries) in reused buffers, so
        the float32 levels of a chunk stay in cache for the matrix product. ``prefix=True``: a
        cheap estimate (about 1/8 of the work) from the first :meth:`prefix_dims` rotated
        coordinates, scaled up (quantised codecs only; used to choose which candidates get the
        full MaxSim).

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(10, 16)).astype("float32")
        >>> c = ColbertCodec("float32", 16)
        >>> codes, aux = c.encode(x)
        >>> q = x[:3]
        >>> got = c.maxsim(c.prepare_query(q), codes, aux, np.array([4, 0, 6]))
        >>> want = [(q @ x[:4].T).max(1).mean(), 0.0, (q @ x[4:].T).max(1).mean()]
        >>> bool(np.allclose(got, want, atol=1e-5))
        True
        """
        qr, qmu = prepared
        lens = np.asarray(lens, dtype=np.int64)
        out = np.zeros(len(lens), dtype=np.float32)
        if len(lens) == 0 or len(qr) == 0:
            return out
        d = self.prefix_dims() if prefix else self.dim
        if d < self.dim:  # (``codes`` may hold just these columns: a segment's ``col_prefix``)
            codes = codes[:, :self.prefix_cols()]
        ends = np.cumsum(lens)
        starts = ends - lens
        step = max(int(step), int(lens.max()))
        q = np.array(qr[:, :d], dtype=np.float32, order="C")   # [Tq, d]
        if d < self.dim:
            q *= np.float32(self.dim / d)
        qsum = None
        if self.name == "1bit":  # <q, 2b - 1> = <2q, b> - sum(q): the 2 goes into the query (exact)
            qsum = q.sum(axis=1, dtype=np.float32)[:, None]
            q *= np.float32(2.0)
        aux = None if aux is None else np.asarray(aux, dtype=np.float32)
        # small products (the estimate): similarities as [query tokens, document tokens], so the max
        # over a document's tokens runs along contiguous rows (4x cheaper than down columns); large
        # ones: [document tokens, query tokens], the faster orientation of the product itself
        wide = d < TRANSPOSED_MAXSIM_DIMS
        q_t = None if wide else np.ascontiguousarray(q.T)
        if qsum is not None and not wide:
            qsum = qsum.T
        direct = self.name == "float32"
        rows = min(step, int(ends[-1]))
        buf = None if direct else np.empty((rows, d), dtype=np.float32)
        sims_buf = np.empty(len(q) * rows, dtype=np.float32)
        i, n = 0, len(lens)
        while i < n:
            j = max(int(np.searchsorted(ends, starts[i] + step, side="right")), i + 1)
            a, b = int(starts[i]), int(ends[j - 1])
            if b > a:
                if direct:
                    lv = np.asarray(codes[a:b], dtype=np.float32)
                else:
                    lv = buf[: b - a]
                    self._levels_into(np.asarray(codes[a:b]), lv)
                if wide:
                    sims = sims_buf[: len(q) * (b - a)].reshape(len(q), b - a)
                    np.matmul(q, lv.T, out=sims)
                else:
                    sims = sims_buf[: len(q) * (b - a)].reshape(b - a, len(q))
                    np.matmul(lv, q_t, out=sims)
                if qsum is not None:
                    sims -= qsum
                if aux is not None:
                    sims *= aux[None, a:b] if wide else aux[a:b, None]
                ln = lens[i:j]
                ne = ln > 0
                m = np.maximum.reduceat(sims, (starts[i:j] - a)[ne], axis=1 if wide else 0)
                if qmu is not None:  # max_t(x_t + c) = max_t(x_t) + c
                    m += qmu[:, None] if wide else qmu[None, :]
                out[i:j][ne] = m.mean(axis=0 if wide else 1)
            i = j
        return out

    def decode(self, codes: np.ndarray, aux: Optional[np.ndarray]) -> np.ndarray:
        """Approximate float32 vectors ``[T, dim]`` (exact for float32, float16-rounded for float16)."""
        lv = self.levels(codes)
        if not self.quantized:
            return np.array(lv, dtype=np.float32)
        return (lv * np.asarray(aux, dtype=np.float32)[:, None]) @ self.rotation + self.center


def make_colbert_codec(name: str, dim: int) -> ColbertCodec:
    """A fresh (unfitted) codec."""
    return ColbertCodec(name, dim)
