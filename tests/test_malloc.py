"""bgem3._malloc: glibc's growing mmap threshold is what let `bgem3 index` resident memory grow with
the input (freed per-batch activations left holes in the main heap). The test observes the
threshold directly: after a large mapped block is freed, glibc by default serves the next
half-as-large block from the heap; with bound_heap_growth() it is mapped (and so returned on free)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import bgem3.cli as cli

PROBE = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print("no-mallinfo2"); sys.exit(0)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "bounded":
        from bgem3._malloc import bound_heap_growth
        assert bound_heap_growth()
    big = libc.malloc(16 << 20); libc.free(big)  # a mapped block freed: glibc raises its threshold
    before = libc.mallinfo2().hblkhd
    half = libc.malloc(8 << 20)
    print("mapped" if libc.mallinfo2().hblkhd - before >= (8 << 20) else "heap")
    libc.free(half)
""")


def _probe(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_bounded_heap_keeps_large_blocks_mapped():
    default = _probe("default")
    if default == "no-mallinfo2":
        pytest.skip("C library without mallinfo2")
    assert default == "heap"  # glibc's dynamic threshold: the fragmentation the fix removes
    assert _probe("bounded") == "mapped"


def test_bgem3_index_bounds_the_heap_before_it_reads_anything(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("bgem3._malloc.bound_heap_growth", lambda: calls.append(1) or True)
    with pytest.raises((cli.CLIError, FileNotFoundError)):
        cli.cmd_index(cli.build_parser().parse_args(["index", str(tmp_path / "missing"), "--index",
                                                     str(tmp_path / "idx")]))
    assert calls == [1]
