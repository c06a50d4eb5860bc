"""The peer's side of bench/profile_cpu.py: onnxruntime's own per-node profile of a model, 1 thread.

    .venv/bin/python bench/ort_profile.py MODEL.onnx|mobilenet_v2|efficientnet|resnet18 [--input-shape 1,3,H,W]
        [--runs 200] [--top 40]

onnxruntime (CPU provider, default graph optimizations, intra/inter-op 1 thread) runs the model ``--runs`` times
on one seeded random input with ``enable_profiling``; each node's kernel time is the median over the runs. Prints
the total, the time per op type, and the slowest nodes with their input shapes (a Conv's: input, weight, bias), so
a layer can be set next to edgec's kernel of the same shape in bench/profile_cpu.py's table. Inside a whole run,
unlike profile_cpu.py's kernels timed alone with warm caches. The host CPU is printed first.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def node_times(path: Path, shape: list[int] | None, runs: int) -> dict[tuple[str, str, str], float]:
    """Median microseconds per node: (node name, op type, input shapes) → µs."""
    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        dims = shape or [d if isinstance(d, int) else 1 for d in inp.shape]
        x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
        for _ in range(runs):
            session.run(None, {inp.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            args = event["args"]
            shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
            times[(event["name"][:-len("_kernel_time")], args.get("op_name", "?"), str(shapes))].append(event["dur"])
    return {key: float(np.median(v)) for key, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224 (models with dynamic dims)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    path = Path(a.model)
    if not path.exists():
        import models

        path = models.onnx_path(a.model)
    from compile_vs_ort import host_line

    print(f"# ort_profile: {host_line()}; onnxruntime 1 thread, median of {a.runs} runs per node")
    shape = [int(v) for v in a.input_shape.split(",")] if a.input_shape else None
    times = node_times(path, shape, a.runs)
    print(f"total {sum(times.values()) / 1000:.3f} ms over {len(times)} nodes")
    by_op: collections.Counter = collections.Counter()
    for (_, op, _), us in times.items():
        by_op[op] += us
    for op, us in by_op.most_common():
        print(f"  {op:<24} {us / 1000:8.3f} ms")
    for (name, op, shapes), us in sorted(times.items(), key=lambda item: -item[1])[:a.top]:
        print(f"{us:9.1f} us  {op:<16} {name[:40]:<40} {shapes}")


if __name__ == "__main__":
    main()
