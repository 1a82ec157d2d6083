"""Compile for an NVIDIA H100 or a TPU v5e on a machine without either, and read the program.

Deviceless ahead-of-time compilation: ``jax.experimental.topologies`` describes a device that is
not there, and ``jit(f).lower(ShapeDtypeStructs placed on it).compile()`` runs XLA's compiler for
it. What it needs:

* H100: ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt`` at exactly the installed jax's version;
  the target description below (132 SMs, 3.35 TB/s, 50 MiB L2, sm_90).
* TPU v5e: ``libtpu`` at the version jax's ``tpu`` extra pins (jax 0.10.2: ``libtpu==0.0.42.*``).

What the compiled program can tell: its temp memory, and its structure (while loops, their trip
counts, the kernels one step launches, GEMMs and their FLOPs, copies). What it cannot tell: a
time. Nothing runs and nothing is autotuned, so GEMM choices and temp sizes can differ from a
real device's: compare variants compiled in the same run. Triton GEMM fusion is turned off for
the H100 (its autotuner needs a device), so every GEMM is a cuBLAS call here. Pallas kernels
lower and compile (the Triton backend for the H100) under ``jax.default_device(device(t))``.
"""

from __future__ import annotations

import collections
import functools
import math
import re
from dataclasses import dataclass, field

import jax

H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 10
  patch: 0
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""

TARGETS = ("h100", "v5e")


@functools.cache
def _topology(target: str):
    from jax.experimental import topologies

    if target == "h100":
        return topologies.get_topology_desc(
            platform="cuda", target_config=H100_SXM, topology="1x1x1"
        )
    if target == "v5e":
        return topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    raise ValueError(f"target must be one of {TARGETS}; got {target!r}")


def device(target: str):
    """The (deviceless) first device of the target."""
    return _topology(target).devices[0]


def place(target: str, *structs):
    """``structs`` as ShapeDtypeStructs on one deviceless device of the target."""
    sharding = jax.sharding.SingleDeviceSharding(device(target))
    return tuple(jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in structs)


def compile_for(target: str, fn, *structs):
    """``jax.jit(fn)`` lowered and compiled for the target from ShapeDtypeStructs."""
    options: dict[str, str | bool] = {}
    if target == "h100":
        options["xla_gpu_enable_triton_gemm"] = False
    with jax.default_device(device(target)):
        return jax.jit(fn).lower(*place(target, *structs)).compile(compiler_options=options)


# ------------------------------------------------------------------------------ reading HLO
_NOT_KERNELS = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "constant",
    "bitcast",
    "while",
    "conditional",
    "call",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
}


@dataclass
class Loop:
    """One while loop: its trip count, its depth, and what one step launches."""

    body: str
    trips: int
    runs: int  # how many times the loop is entered (product of the enclosing trip counts)
    depth: int
    kernels: collections.Counter = field(default_factory=collections.Counter)
    gemm_flops: float = 0.0  # per step


@dataclass
class Structure:
    temp_bytes: int
    entry: collections.Counter
    loops: list[Loop]

    @property
    def launches(self) -> int:
        """Kernels launched in all: the entry's, plus every loop's steps times its kernels."""
        total = sum(self.entry.values())
        return total + sum(lp.runs * lp.trips * sum(lp.kernels.values()) for lp in self.loops)

    def copies_in_loops(self) -> int:
        return sum(lp.kernels.get("copy", 0) for lp in self.loops)

    def gemm_flops(self, entry_flops: float) -> float:
        return entry_flops + sum(lp.runs * lp.trips * lp.gemm_flops for lp in self.loops)


def _computations(text: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            comps[current] = []
        elif current and line.strip() == "}":
            current = None
        elif current:
            comps[current].append(line)
    return comps


_INSTR = re.compile(r"^\s*(?:ROOT )?(%[\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")


def _shape_dims(shape: str) -> list[int]:
    """Dimensions of the first array shape in ``shape`` (``f32[2,3]{1,0}`` or a tuple)."""
    m = re.search(r"[a-z]+\d*\[([\d,]*)\]", shape)
    if not m or not m.group(1):
        return []
    return [int(x) for x in m.group(1).split(",")]


def _kind(op: str, rest: str) -> str | None:
    if op == "fusion":
        kind = re.search(r"kind=(\w+)", rest)
        return "fusion:" + (kind.group(1) if kind else "?")
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        name = target.group(1) if target else "?"
        if "matmul" in name.lower() or "gemm" in name.lower() or "cublas" in name.lower():
            return "gemm"
        if "triton" in name.lower():
            return "triton"
        return "custom-call:" + name
    if op in _NOT_KERNELS:
        return None
    return op


def _dot_flops(out_shape: str, rest: str, shapes: dict[str, str], comps) -> float:
    """FLOPs of a cuBLAS custom call, or of the dots inside a fusion (TPU, CPU)."""
    out = _shape_dims(out_shape)
    if "custom_call_target" in rest:
        operands = re.findall(r"(%[\w.\-]+)", rest.split(")", 1)[0])
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', rest)
        if not operands or contracting is None:
            return 0.0
        lhs = _shape_dims(shapes.get(operands[0], ""))
        dims = [int(x.strip('"')) for x in contracting.group(1).split(",") if x]
        k = math.prod(lhs[i] for i in dims) if lhs else 0
        return 2.0 * math.prod(out) * k
    called = re.search(r"calls=(%[\w.\-]+)", rest)
    if not called:
        return 0.0
    total = 0.0
    inner = comps.get(called.group(1), [])
    inner_shapes = {m.group(1): m.group(2) for line in inner if (m := _INSTR.match(line))}
    for line in inner:
        m = _INSTR.match(line)
        if not m or m.group(3) not in ("dot", "convolution"):
            continue
        operands = re.findall(r"(%[\w.\-]+)", m.group(4).split(")", 1)[0])
        dims_m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", m.group(4))
        if m.group(3) == "dot" and operands and dims_m:
            lhs = _shape_dims(inner_shapes.get(operands[0], ""))
            dims = [int(x) for x in dims_m.group(1).split(",") if x]
            total += 2.0 * math.prod(_shape_dims(m.group(2))) * math.prod(lhs[i] for i in dims)
        elif m.group(3) == "convolution" and len(operands) >= 2:
            # A dot written as a convolution (TPU): FLOPs = 2 |out| K.
            lhs = _shape_dims(inner_shapes.get(operands[0], ""))
            rhs = _shape_dims(inner_shapes.get(operands[1], ""))
            out_dims = _shape_dims(m.group(2))
            if lhs and rhs and out_dims:
                total += 2.0 * math.prod(out_dims) * _conv_k(lhs, rhs, out_dims)
    return total


def _conv_k(lhs, rhs, out) -> float:
    """The contracted size K of a dot written as a convolution: |lhs| = M K, |rhs| = K P and
    |out| = M P, so K^2 = |lhs| |rhs| / |out|."""
    return math.sqrt(math.prod(lhs) * math.prod(rhs) / max(math.prod(out), 1))


def _trip_count(rest: str, comps) -> int:
    """A while loop's trip count: XLA's known_trip_count, else the bound its condition
    compares the counter with (``counter < constant``)."""
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
    if trip:
        return int(trip.group(1))
    cond = re.search(r"condition=(%[\w.\-]+)", rest)
    lines = comps.get(cond.group(1), []) if cond else []
    bounds = [int(m.group(1)) for line in lines if (m := re.search(r"constant\((\d+)\)", line))]
    return bounds[0] if len(bounds) == 1 else 1


def _kernels(lines, comps) -> tuple[collections.Counter, float, list[tuple[str, int]]]:
    """Kernel kinds, GEMM FLOPs and the (body, trip count) of the while loops of a computation."""
    shapes = {m.group(1): m.group(2) for line in lines if (m := _INSTR.match(line))}
    kinds: collections.Counter = collections.Counter()
    flops = 0.0
    loops = []
    for line in lines:
        m = _INSTR.match(line)
        if not m:
            continue
        _, shape, op, rest = m.groups()
        if op == "while":
            body = re.search(r"body=(%[\w.\-]+)", rest)
            if body:
                loops.append((body.group(1), _trip_count(rest, comps)))
            continue
        kind = _kind(op, rest)
        if kind is None or (kind == "copy" and not _shape_dims(shape)):
            continue  # a scalar copy (a loop counter on TPU) is no data movement
        if kind == "gemm" or kind.startswith("fusion"):
            gemm = _dot_flops(shape, rest, shapes, comps)
            flops += gemm
            kind = "gemm" if gemm else kind  # a fusion around a dot (TPU) counts as a GEMM
        kinds[kind] += 1
    return kinds, flops, loops


def structure(compiled) -> tuple[Structure, float]:
    """The program's loops and kernels, and the GEMM FLOPs of its entry computation."""
    text = compiled.as_text()
    comps = _computations(text)
    entry = re.search(r"^ENTRY (%[\w.\-]+)", text, re.M)
    entry_name = entry.group(1) if entry else ""
    entry_kinds, entry_flops, todo = _kernels(comps.get(entry_name, []), comps)
    loops: list[Loop] = []

    def visit(body, trips, runs, depth):  # depth first, so nested loops follow their parent
        kinds, flops, inner = _kernels(comps.get(body, []), comps)
        loops.append(Loop(body, trips, runs, depth, kinds, flops))
        for b, t in inner:
            visit(b, t, runs * trips, depth + 1)

    for body, trips in todo:
        visit(body, trips, 1, 1)
    temp = int(compiled.memory_analysis().temp_size_in_bytes)
    return Structure(temp, entry_kinds, loops), entry_flops


def describe(compiled, gemm_pass_flops: float) -> dict:
    """A summary of a compiled program: temp, launches, GEMM passes, copies in loops, loops."""
    st, entry_flops = structure(compiled)
    loops = []
    for lp in st.loops:
        gemms = lp.kernels.get("gemm", 0)
        kernels = sum(lp.kernels.values())
        loops.append(
            f"{'  ' * (lp.depth - 1)}x{lp.trips}"
            + (f" (entered {lp.runs}x)" if lp.runs > 1 else "")
            + f": {kernels} kernels/step ({gemms} GEMM"
            + ("" if gemms == 1 else "s")
            + (f", {lp.kernels['copy']} copy" if lp.kernels.get("copy") else "")
            + ")"
        )
    flops = st.gemm_flops(entry_flops)
    return {
        "temp": st.temp_bytes,
        "launches": st.launches,
        "gemm_passes": flops / gemm_pass_flops if gemm_pass_flops else float("nan"),
        "copies_in_loops": st.copies_in_loops(),
        "loops": loops,
        "entry_kernels": sum(st.entry.values()),
    }
