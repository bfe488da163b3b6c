"""fp32 linear layers of the exact CPU path through oneDNN where PyTorch's BLAS call is the slow one.

PyTorch runs an fp32 ``nn.Linear`` on CPU as an MKL ``sgemm``. MKL picks its AVX2 kernels on
non-Intel CPUs, so on an AMD Zen 4 with AVX-512 it reached ~100 GFLOP/s per core where oneDNN (also
inside every PyTorch CPU build) reached ~200-245 on the same [rows, 384] x [384, 1536] products
(one thread; 2.0-2.4x on the transformer's shapes, docs/benchmarks_encode.md). That was most of why
the exact path was 1.8x slower than ONNX Runtime (MLAS, AVX-512) on a single query.

Same op, same fp32 arithmetic (no bf16 / TF32 shortcut: used only while PyTorch's fp32 matmul
precision is the default "highest"), another summation order: outputs move at float rounding
(~1e-7 on normalised vectors), as ONNX Runtime's do. The exact GELU of the FFN is fused as
oneDNN's ``gelu_erf`` post-op.

Policy (:data:`ONEDNN`): ``None`` (auto) uses oneDNN on x86 CPUs whose vendor is not Intel (where
MKL takes its AVX2 path; measured here) and keeps MKL on Intel CPUs (MKL's home, not measured here);
``True`` / ``False`` force it (benchmarks time both). Anything else (bf16 / int8 layers, GPUs, a
PyTorch without the oneDNN op, fewer than :data:`MIN_ROWS` rows, a module with forward hooks, as
bgem3.quant's calibration sets) runs the module as it is.

Pre-packed weights (:func:`pack_linears`, policy :data:`PREPACK`): with a plain fp32 weight oneDNN
re-orders the whole matrix into its blocked layout at every call, which is most of a short text's time
(ONNX Runtime packs once at load). :func:`pack_linears` re-orders each weight once and keeps only
that blocked copy: the module becomes a :class:`PackedLinear`, its dense ``weight`` parameter is
dropped, so the weights stay ONE copy in memory. The dense matrix comes back exactly (the re-order
is a permutation) wherever something reads it: ``mod.weight`` (a fresh dense copy), ``state_dict()``,
pickling / ``copy.deepcopy`` (a plain ``nn.Linear``), and anything that moves or casts the module
(``.to()``, ``.bfloat16()``, ``.cuda()``), assigning ``mod.weight`` or ``load_state_dict`` turn it
back into a plain ``nn.Linear`` first (:func:`unpack_linears` does it for a whole model). The
Encoder packs its transformer layers at load (query/key/value as one weight, :func:`pack_fused`) and
unpacks them when anything outside it asks for ``Encoder.model``. :data:`PREPACK` is read when an
encoder is built: switching :data:`ONEDNN` off afterwards runs its packed layers through a fresh dense
copy per call (right, but slower than an encoder built with ``PREPACK = False``).

Example::

    >>> import torch
    >>> from bgem3._cpu_linear import linear
    >>> lin = torch.nn.Linear(8, 4)
    >>> x = torch.randn(16, 8)
    >>> bool(torch.allclose(linear(lin, x), lin(x), atol=1e-5))
    True
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from typing import Any, Optional

import torch
from torch.nn.modules import module as _module

#: None: auto (oneDNN on non-Intel x86 CPUs); True / False: force (benchmarks, tests)
ONEDNN: Optional[bool] = None
#: fewer rows than this run on MKL (oneDNN's per-call setup costs more than it saves on 1-7 rows)
MIN_ROWS = 8
#: None: auto (pre-pack whenever the oneDNN route is on, :func:`onednn_active`); True / False: force.
#: Read when an Encoder is built (:func:`prepack_active`); packed layers run on oneDNN at any row count.
PREPACK: Optional[bool] = None
#: the row count oneDNN is told to expect when it picks the packed layout (any count runs; 64 measured
#: as good as 1024 on 8-16k rows and better on 8-64 rows)
PACK_ROWS_HINT = 64


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=None)
def _onednn_works() -> bool:
    """The private oneDNN op exists in this PyTorch and matches ``F.linear`` on a small problem."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((16, 64), (48, 64), (48,)))
        got = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
        return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))
    except Exception:  # an op that changed its signature: MKL, as PyTorch does it
        return False


@functools.lru_cache(maxsize=None)
def _auto() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and _cpu_vendor() not in ("", "GenuineIntel") \
        and _onednn_works()


def onednn_active() -> bool:
    """Whether fp32 linear layers of the exact CPU path run on oneDNN now (see :data:`ONEDNN`)."""
    if torch.backends.mkldnn.matmul.fp32_precision not in ("none", "ieee"):
        return False  # the user allowed bf16/TF32 inside fp32 matmuls: leave it to PyTorch
    return _auto() if ONEDNN is None else bool(ONEDNN) and _onednn_works()


def prepack_active() -> bool:
    """Whether an Encoder built now pre-packs its fp32 linear weights for oneDNN (see :data:`PREPACK`)."""
    if PREPACK is False or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return onednn_active() if PREPACK is None else _onednn_works()


def _hooked(mod: torch.nn.Module) -> bool:
    """Whether calling ``mod`` runs hooks (bgem3.quant's calibration records inputs so): then it is called."""
    return bool(mod._forward_hooks or mod._forward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks)


def linear(mod: torch.nn.Module, x: torch.Tensor, *, gelu: bool = False,
           active: Optional[bool] = None) -> torch.Tensor:
    """``mod(x)`` (then exact GELU when ``gelu``), on oneDNN when that is the faster fp32 path here.

    ``active``: :func:`onednn_active`'s answer when the caller already has it (saves the lookup per layer).
    """
    if active is None:
        active = onednn_active()
    if active and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 and x.is_contiguous() \
            and not _hooked(mod):
        kind = type(mod)
        w = None
        if kind is PackedLinear:
            w = mod.__dict__.get("_packed")  # None only while another thread unpacks it
        elif kind is torch.nn.Linear and x.shape[0] >= MIN_ROWS and mod.weight.dtype == torch.float32:
            w = mod.weight
        if w is not None:
            return torch.ops.mkldnn._linear_pointwise(x, w, mod.bias, "gelu" if gelu else "none", [],
                                                      "none" if gelu else "")
    y = mod(x)
    return torch.ops.aten.gelu_(y) if gelu else y


# --------------------------------------------------------------------------- pre-packed weights (one copy)

class PackedLinear(torch.nn.Linear):
    """An fp32 CPU ``nn.Linear`` whose weight is held once, in oneDNN's blocked layout (:func:`pack_linears`).

    Made only from an existing ``nn.Linear`` by :func:`pack_linears`; :meth:`unpack` turns it back. Its
    ``weight`` parameter slot is empty (so the weight is not held twice); reading ``weight`` gives a
    fresh dense copy, equal to the original bit for bit. Anything that would change, move or cast the
    weight unpacks first, so it acts on the real parameter.
    """

    def __init__(self, *args, **kwargs):  # noqa: D107 - never built directly
        raise TypeError("PackedLinear is made from an nn.Linear by bgem3._cpu_linear.pack_linears(model)")

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """A dense fp32 copy of the weight (writes to it do not reach the layer: unpack first to change it)."""
        packed = self.__dict__.get("_packed")
        if packed is not None:
            return packed.to_dense().requires_grad_(self.__dict__.get("_weight_requires_grad", False))
        group = self.__dict__.get("_fused")
        if group is not None:
            return group.dense_of(self).requires_grad_(self.__dict__.get("_weight_requires_grad", False))
        return self._parameters["weight"]  # unpacked meanwhile by another thread: the real parameter is back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.__dict__.get("_packed")
        group = self.__dict__.get("_fused")
        if packed is None and group is None:  # unpacked meanwhile by another thread
            return torch.nn.Linear.forward(self, x)
        if _tracing():  # a trace would record a oneDNN-only op and a constant where the parameter was
            raise RuntimeError("a pre-packed linear layer cannot be traced or exported; call "
                               "bgem3._cpu_linear.unpack_linears(model) first (Encoder.model does it)")
        if x.dtype == torch.float32 and x.device.type == "cpu" and onednn_active() \
                and not (x.requires_grad and torch.is_grad_enabled()):
            if packed is not None:
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, self.bias, "none", [], "")
            return group.product(x.contiguous())[group.mods.index(self)].contiguous()  # its columns of the fused one
        return torch.nn.functional.linear(x, self.weight, self.bias)  # e.g. ONEDNN switched off since packing

    def unpack(self) -> torch.nn.Linear:
        """Back to a plain ``nn.Linear`` in place (dense weight parameter restored; the packed copy freed).
        A layer packed with others in one product (:func:`pack_fused`) unpacks them all."""
        packed = self.__dict__.get("_packed")
        if packed is not None:
            _restore_dense(self, packed.to_dense())
        group = self.__dict__.get("_fused")
        if group is not None:
            group.unpack()
        return self  # type: ignore[return-value]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight  # dense, first as nn.Linear has it; the bias follows
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, *args, **kwargs):
        self.unpack()
        torch.nn.Linear._load_from_state_dict(self, *args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(), .float(), .bfloat16(), .cuda(), share_memory(), ...
        return self.unpack()._apply(fn, recurse)

    def __setattr__(self, name, value):
        if name == "weight":
            self.unpack()
        torch.nn.Linear.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name == "weight":
            self.unpack()
        torch.nn.Linear.__delattr__(self, name)

    def __reduce_ex__(self, protocol):  # pickle / copy.deepcopy: a plain nn.Linear with the dense weight
        lin = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.__dict__.update({k: v for k, v in self.__dict__.items() if k not in _PACKED_KEYS})
        lin._parameters = dict(self._parameters)
        lin._parameters["weight"] = torch.nn.Parameter(self.weight.detach(), requires_grad=self.weight.requires_grad)
        return _plain_linear, (lin,)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", weight pre-packed for oneDNN"


_PACKED_KEYS = ("_packed", "_fused", "_weight_requires_grad")


def _drop_dense(mod: torch.nn.Linear, key: str, value: Any) -> None:
    """Make ``mod`` a :class:`PackedLinear` holding ``value`` under ``key`` (``"_packed"`` or ``"_fused"``)
    with its dense weight parameter slot emptied."""
    mod.__dict__["_weight_requires_grad"] = mod._parameters["weight"].requires_grad
    mod.__dict__[key] = value
    mod._parameters["weight"] = None
    mod.__class__ = PackedLinear


def _restore_dense(mod: torch.nn.Module, dense: torch.Tensor) -> None:
    """Back to a plain ``nn.Linear`` with ``dense`` as its weight parameter (the inverse of :func:`_drop_dense`)."""
    mod._parameters["weight"] = torch.nn.Parameter(dense, requires_grad=mod.__dict__.get("_weight_requires_grad", False))
    mod.__class__ = torch.nn.Linear
    for k in _PACKED_KEYS:
        mod.__dict__.pop(k, None)


class _Fused:
    """One packed weight for several layers that read the same input (an attention block's query, key and
    value): one product ``[rows, sum(out)]`` instead of one per layer, bit for bit the same columns. The
    layers keep their own biases (concatenated once and again whenever one of them changes: a new
    tensor or an in-place write, seen by its version counter)."""

    def __init__(self, packed: torch.Tensor, mods: tuple):
        self.packed, self.mods = packed, mods
        self.sizes = [m.out_features for m in mods]
        self._bias_key: Optional[list] = None
        self._bias: Optional[torch.Tensor] = None

    def bias(self) -> Optional[torch.Tensor]:
        """The layers' biases end to end (None without bias), cached while none of them changes."""
        biases = [m.bias for m in self.mods]
        if biases[0] is None:
            return None
        key = _tensor_state(biases)
        if not _same_state(self._bias_key, key):
            with torch.inference_mode(False), torch.no_grad():
                self._bias = torch.cat([b.detach() for b in biases])
            self._bias_key = key
        return self._bias

    def dense_of(self, mod) -> torch.Tensor:
        i = self.mods.index(mod)
        start = sum(self.sizes[:i])
        return self.packed.to_dense()[start:start + self.sizes[i]].clone()

    def product(self, x: torch.Tensor) -> tuple:
        y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias(), "none", [], "")
        return y.split(self.sizes, dim=-1)

    def unpack(self) -> None:
        dense = self.packed.to_dense()
        start = 0
        for mod, size in zip(self.mods, self.sizes):
            if mod.__dict__.get("_fused") is self:
                _restore_dense(mod, dense[start:start + size].clone())
            start += size


def fused_product(mod: torch.nn.Module, x: torch.Tensor, active: bool) -> Optional[tuple]:
    """The outputs of ``mod`` and the layers packed with it (:func:`pack_fused`) for ``x`` in one product,
    or None where that does not apply (not packed so, oneDNN off, hooks, not a 2-D fp32 CPU input)."""
    group = mod.__dict__.get("_fused")
    if group is None or not active or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 \
            or not x.is_contiguous() or any(_hooked(m) for m in group.mods):
        return None
    return group.product(x)


def _plain_linear(lin: torch.nn.Linear) -> torch.nn.Linear:
    """Unpickling a :class:`PackedLinear` gives the plain ``nn.Linear`` it was saved as."""
    return lin


def _tracing() -> bool:
    """An export or compiler trace (ONNX, TorchScript, torch.compile) must see a plain linear product."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    try:
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - older PyTorch
        pass
    return False


def pack_linears(modules) -> int:
    """Pre-pack every plain fp32 CPU ``nn.Linear`` in ``modules`` (modules or one module: all its
    submodules) for oneDNN, in place, keeping one copy of each weight; returns the bytes packed.

    Skipped: other dtypes / devices, subclasses, and weights held elsewhere too (tied or shared
    parameters, whose dense copy would stay alive beside the packed one).
    """
    if isinstance(modules, torch.nn.Module):
        modules = modules.modules()
    done = 0
    file_maps = _file_mappings()
    for mod in list(modules):
        if type(mod) is not torch.nn.Linear:
            continue
        w = mod.weight
        if w.dtype != torch.float32 or w.device.type != "cpu" or w.dim() != 2 or w.is_meta \
                or sys.getrefcount(w) > _REFS_OF_AN_UNSHARED_WEIGHT:
            continue
        _drop_dense(mod, "_packed", torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS_HINT))
        done += w.numel() * w.element_size()
        _release_file_pages(w, file_maps)
        del w
    return done


def _file_mappings() -> list:
    """(start, end) of this process's private file mappings (Linux; a mapped safetensors checkpoint)."""
    spans = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[1].endswith("p") and parts[4] != "0" and parts[5].startswith("/"):
                    a, b = parts[0].split("-")
                    spans.append((int(a, 16), int(b, 16)))
    except OSError:
        pass
    return spans


def _release_file_pages(w: torch.Tensor, spans: list) -> int:
    """Give back the resident pages of a weight that was read from a mapped checkpoint file and is no longer used.

    The loader maps ``model.safetensors`` once and every weight is a view into it, so dropping one weight
    leaves the pages it touched resident (clean page cache, but counted in the process's RSS, i.e. a second
    copy beside the packed one). Only whole pages inside the weight's own bytes, inside a private file
    mapping, and only when no other tensor shares its storage; nothing else is touched. Returns the bytes.
    """
    if not spans or sys.platform != "linux":
        return 0
    try:
        storage = w.untyped_storage()
        if torch._C._storage_Use_Count(storage._cdata) > _USES_OF_AN_UNSHARED_STORAGE:
            return 0
        page = _page_size()
        a, b = w.data_ptr(), w.data_ptr() + w.numel() * w.element_size()
        start, end = -(-a // page) * page, (b // page) * page
        if end <= start or not any(lo <= start and end <= hi for lo, hi in spans):
            return 0
        libc = _libc()
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4) != 0:  # MADV_DONTNEED
            return 0
        return end - start
    except Exception:  # an allocator or platform without these: the pages stay (correct, just resident)
        return 0


def trim_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim``; elsewhere nothing): packing
    frees one temporary concatenated weight per block, which would otherwise stay in the process's RSS."""
    if sys.platform != "linux":
        return
    try:
        _libc().malloc_trim(0)
    except Exception:  # not glibc (musl): nothing to do
        pass


@functools.lru_cache(maxsize=None)
def _libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.madvise.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=None)
def _page_size() -> int:
    return int(os.sysconf("SC_PAGE_SIZE"))


def _storage_uses() -> int:
    t = torch.zeros(4)
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


#: _storage_Use_Count of a storage held by one tensor (while its Python storage object is alive)
_USES_OF_AN_UNSHARED_STORAGE = _storage_uses()


def pack_fused(*mods: torch.nn.Module) -> int:
    """Pre-pack plain fp32 CPU ``nn.Linear`` layers that take the same input (same ``in_features``, all
    with or all without bias) as ONE weight for one product (:func:`fused_product`), keeping one copy;
    returns the bytes packed (0, and nothing changed, where one of them does not qualify)."""
    if len(mods) < 2 or any(type(m) is not torch.nn.Linear for m in mods) \
            or len({m.in_features for m in mods}) != 1 or len({m.bias is None for m in mods}) != 1:
        return 0
    ws = [m.weight for m in mods]
    if any(w.dtype != torch.float32 or w.device.type != "cpu" or w.is_meta for w in ws) \
            or any(sys.getrefcount(w) > _REFS_OF_AN_UNSHARED_WEIGHT + 1 for w in ws):  # + the list's reference
        return 0
    whole = torch.cat([w.detach() for w in ws])
    group = _Fused(torch.ops.mkldnn._reorder_linear_weight(whole, PACK_ROWS_HINT), tuple(mods))
    del whole
    spans = _file_mappings()
    for mod in mods:
        _drop_dense(mod, "_fused", group)
    done = 0
    while ws:
        w = ws.pop()
        done += w.numel() * w.element_size()
        _release_file_pages(w, spans)
        del w
    return done


def unpack_linears(module: torch.nn.Module) -> int:
    """Turn every :class:`PackedLinear` under ``module`` back into a plain ``nn.Linear`` (in place);
    returns how many."""
    n = 0
    for mod in list(module.modules()):
        if type(mod) is PackedLinear:
            mod.unpack()
            n += 1
    return n


def _unshared_refcount() -> int:
    lin = torch.nn.Linear(2, 2)
    w = lin.weight
    return sys.getrefcount(w)


#: sys.getrefcount of a Linear's weight held only by its module (and the local name + the call's argument)
_REFS_OF_AN_UNSHARED_WEIGHT = _unshared_refcount()


class PackedCopy:
    """A pre-packed oneDNN copy of small plain fp32 ``nn.Linear`` layers that read the same input (BGE-M3's
    ColBERT ``[H, H]`` and sparse ``[1, H]`` heads), run as ONE product, bit for bit the same columns as
    separate products. Unlike :func:`pack_fused` the layers stay untouched (public attributes whose weights
    users read); the copy is rebuilt whenever a weight or bias changes (a new tensor, or an in-place write
    seen by its version counter), so it is never stale. Meant for layers of a few MB at most."""

    def __init__(self):
        self._key: Optional[tuple] = None
        self._packed: Optional[tuple] = None

    def product(self, mods: tuple, x: torch.Tensor, active: bool) -> Optional[tuple]:
        """The outputs of ``mods`` for ``x`` (2-D fp32 CPU, contiguous) as one product, or None where this
        does not apply (oneDNN off, hooks, another layer type / dtype / device, mixed bias)."""
        if not active or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 \
                or not x.is_contiguous() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
            return None
        if any(type(m) is not torch.nn.Linear or _hooked(m) for m in mods) or len({m.bias is None for m in mods}) != 1:
            return None
        key = _layer_state(mods)
        if not _same_state(self._key, key):
            ws = [m.weight for m in mods]
            if any(w.dtype != torch.float32 or w.device.type != "cpu" or w.is_meta for w in ws):
                return None
            with torch.inference_mode(False), torch.no_grad():
                w = torch.ops.mkldnn._reorder_linear_weight(torch.cat([w.detach() for w in ws]), PACK_ROWS_HINT)
                b = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
            self._packed, self._key = (w, b, [m.out_features for m in mods]), key
        w, b, sizes = self._packed
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "").split(sizes, dim=-1)


def _tensor_state(tensors) -> list:
    """Each tensor (the object itself: an id could be reused) and its version counter (in-place writes)."""
    out: list = []
    for t in tensors:
        out += [t, None if t is None else t._version]
    return out


def _layer_state(mods: tuple) -> list:
    """What a copy of ``mods``' weights depends on: the modules, their weight / bias tensors and versions."""
    out: list = []
    for m in mods:
        out += [m, *_tensor_state((m.weight, m.bias))]
    return out


def _same_state(old: Optional[list], new: list) -> bool:
    return old is not None and len(old) == len(new) and all(
        a == b if type(a) is int else a is b for a, b in zip(old, new))
