"""Shared helpers for the benchmark scripts: machine info, timing, compile-only memory, tables.

Timings are medians over repeated runs after a warm-up; the functions under comparison are run
interleaved (round-robin) so that a slow phase of a busy machine hits them all alike. Memory is
XLA's own figure for the compiled program, ``memory_analysis().temp_size_in_bytes``: it is
deterministic and needs no allocation, so full LLM-scale heads are measured compile-only.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

# Run from a checkout without installing: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (median reported)")
    p.add_argument("--no-memory", action="store_true", help="skip the compile-only memory part")
    p.add_argument("--no-speed", action="store_true", help="skip the timing part")
    return p


# LM heads (N tokens, D, V) of the memory tables, and a small one for smoke runs.
HEADS = {
    "llama3-8b": (8192, 4096, 128256),
    "gemma2-2b": (8192, 2304, 256000),
}
QUICK_HEADS = {"small": (1024, 512, 16384)}


def head_parser(description: str) -> argparse.ArgumentParser:
    """:func:`parser` with the LM-head benchmarks' size options."""
    p = parser(description)
    p.add_argument("--shape", type=int, nargs=3, metavar=("N", "D", "V"), help="speed sizes")
    p.add_argument("--dtype", default="float32", help="speed input dtype, e.g. bfloat16")
    p.add_argument("--heads", nargs="*", default=None, help=f"memory heads of {list(HEADS)}")
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], help="memory dtypes")
    return p


def chosen_heads(args) -> dict:
    """The memory heads a :func:`head_parser` command line asks for."""
    heads = QUICK_HEADS if args.quick else HEADS
    return {k: heads[k] for k in args.heads} if args.heads else heads


def machine() -> str:
    dev = jax.devices()[0]
    return (
        f"platform={dev.platform} device={dev.device_kind} devices={jax.device_count()} "
        f"cpus={os.cpu_count()} host={platform.machine()} python={platform.python_version()} "
        f"jax={jax.__version__}"
    )


def time_interleaved(fns: dict, args: dict, reps: int, warmup: int = 1) -> dict:
    """Median seconds of each ``fns[name](*args[name])``, run round-robin ``reps`` times."""
    for name, fn in fns.items():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args[name]))
    samples = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            # One untimed call first: a function that runs right after another that freed large
            # temporaries otherwise pays the page faults of re-allocating them (up to 30% here).
            jax.block_until_ready(fn(*args[name]))
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def compile_only(fn, *specs):
    """The compiled executable of ``jax.jit(fn)`` for abstract ``jax.ShapeDtypeStruct`` inputs."""
    return jax.jit(fn).lower(*specs).compile()


def temp_bytes(compiled) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


_HLO_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "float64": "f64"}


def loop_copies_of(compiled, dims: tuple[int, int], dtype) -> list[str]:
    """Weight-sized (``[D, V]`` or ``[V, D]``) arrays of a dtype other than ``dtype`` carried by
    the compiled program's while loops: the sign of a convert of W hoisted out of the block loop
    (XLA's CPU backend computes bfloat16 in float32). Empty is good. Arrays inside fused
    computations are not buffers and are not counted."""
    d0, d1 = dims
    own = _HLO_NAMES.get(jnp.dtype(dtype).name, jnp.dtype(dtype).name)
    pattern = re.compile(rf"\b([a-z]+[0-9]*)\[(?:{d0},{d1}|{d1},{d0})\]")
    found = set()
    for line in compiled.as_text().splitlines():
        if re.search(r"= \(.*\) while\(", line):
            found.update(m.group(0) for m in pattern.finditer(line) if m.group(1) != own)
    return sorted(found)


def gib(n: float) -> str:
    return f"{n / 2**30:.3f}"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, rule, *body])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"
