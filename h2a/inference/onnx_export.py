"""A finished run as an ONNX graph, and a runner for it: the way out of H2A for a model.

Hospital and PACS integrations (and the browser demos among the anchors) run ONNX, not
PyTorch. The graph takes what ``h2a.data.transforms.array_input`` makes, so H2A's one
preprocessing path stays the only one: decoding, cropping, resizing and normalising
happen before the graph, and ``LoadedRun.to_output`` turns its raw scalar into months
(or P(male)) after it.

Every graph has the same signature, whatever the model:

* inputs  ``image`` float32 (N, C, S, S), normalised; ``sex`` float32 (N,), 1 = male
  (present, and ignored, when the model was trained without sex);
* outputs ``raw`` (N,), the model's scalar; ``embedding`` (N, D), the pooled features
  (``forward_head(..., pre_logits=True)``) the OOD check and clustering use.

The batch axis is dynamic; the image side is the run's own. The file carries a few facts
as ONNX metadata (``h2a.*``: task, architecture, whether sex is used) so a runner can say
"pass sex" as PyTorch does. The TorchScript-based exporter (``dynamo=False``) is used: it
needs neither onnxscript nor torch.export, and handles every H2A backbone.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from h2a.run import weights_file
from h2a.models import H2AModel
from h2a.inference.loading import load_run

__all__ = ["INPUTS", "ONNX_FILE", "OUTPUTS", "OnnxRunner", "ensure_onnx", "export_model", "export_onnx", "onnx_path"]

ONNX_FILE = "model.onnx"
INPUTS = ("image", "sex")
OUTPUTS = ("raw", "embedding")
MIN_OPSET = 17
CHECK_BATCHES = (1, 3)  # random batches compared with PyTorch after export (two sizes: the axis is dynamic)
_EXPORT_LOCK = threading.Lock()  # one export at a time per process (ensure_onnx from several threads)


def onnx_path(run_dir: str | Path) -> Path:
    """Where a run's exported graph lives by default: RUN/model.onnx."""
    return Path(run_dir) / ONNX_FILE


class _Graph(nn.Module):
    """(image, sex) -> (raw, embedding): the one forward pass the exported graph records."""

    def __init__(self, model: H2AModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, sex: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.model.forward_features(image)
        raw = self.model.forward_head(fmap, sex if self.model.use_sex else None)
        return raw, self.model.forward_head(fmap, pre_logits=True)


def _check_inputs(n: int, in_chans: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded random images (normalised scale) and a mix of both sexes."""
    g = torch.Generator().manual_seed(seed + n)
    x = torch.randn(n, in_chans, size, size, generator=g)
    sex = (torch.arange(n) % 2).float()
    return x, sex


def _finish_graph(tmp: Path, meta: dict[str, str]) -> list[str]:
    """Add ``sex`` when the exporter dropped it as unused (a model trained without sex), so
    every graph has the same inputs; write the h2a.* metadata; validate. Returns input names."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(tmp))
    names = [i.name for i in proto.graph.input]
    if "sex" not in names:
        proto.graph.input.append(helper.make_tensor_value_info("sex", TensorProto.FLOAT, ["batch"]))
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    return [i.name for i in proto.graph.input]


def export_onnx(run_dir: str | Path, out: str | Path | None = None, opset: int = MIN_OPSET) -> dict:
    """Export a finished run to ONNX (default RUN/model.onnx, written atomically), then run
    the file in onnxruntime on random batches and compare with PyTorch.

    Returns path, opset, size_bytes, inputs, outputs, max_abs_diff_raw (and _embedding),
    exporter and seconds. FileNotFoundError for a folder that is not a finished run;
    ValueError for an opset below 17.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: H2A exports opset {MIN_OPSET} or newer")
    t0 = time.perf_counter()
    run = load_run(run_dir, fold_bn=True)
    path = Path(out) if out else onnx_path(run.path)
    result = export_model(run.model, int(run.preprocess.size), path, opset=opset,
                          meta={"h2a.task": run.task, "h2a.run": run.path.name})
    return {"path": result.pop("path"), "run": str(run.path), "task": run.task, **result,
            "seconds": round(time.perf_counter() - t0, 3)}


def export_model(model: H2AModel, size: int, path: str | Path, *, opset: int = MIN_OPSET,
                 meta: dict[str, str] | None = None) -> dict:
    """The model-level half of ``export_onnx`` (any H2AModel, ``size`` px inputs): export,
    add the h2a.* metadata, check against PyTorch, then move into place. The model is left
    in eval mode, contiguous (the exporter wants plain NCHW weights)."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    in_chans = int(model.config.get("in_chans", 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, sex = _check_inputs(2, in_chans, size)
    meta = {"h2a.arch": model.arch, "h2a.use_sex": str(int(model.use_sex)), "h2a.size": str(size),
            "h2a.in_chans": str(in_chans), **(meta or {})}
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            # the legacy exporter's deprecation notice and the trace's "as_tensor is a
            # constant" notes (sex is a graph input all the same: the check below proves it)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            with torch.no_grad():
                # the exporter puts back the wrapper's training flag on the whole tree
                # afterwards: a fresh module is in training mode, which would switch
                # Dropout on in the model compared below
                torch.onnx.export(
                    _Graph(model).eval(), (x, sex), str(tmp), dynamo=False, opset_version=opset,
                    input_names=list(INPUTS), output_names=list(OUTPUTS),
                    dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)},
                    do_constant_folding=True,
                )
        model.eval()
        inputs = _finish_graph(tmp, meta)
        diff_raw, diff_emb = _compare(model, tmp, in_chans, size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(path),
        "arch": model.arch,
        "use_sex": bool(model.use_sex),
        "opset": opset,
        "exporter": "torch.onnx (TorchScript, dynamo=False)",
        "size_bytes": path.stat().st_size,
        "inputs": inputs,
        "outputs": list(OUTPUTS),
        "image_shape": ["batch", in_chans, size, size],
        "checked_batches": list(CHECK_BATCHES),
        "max_abs_diff_raw": diff_raw,
        "max_abs_diff_embedding": diff_emb,
    }


@torch.no_grad()
def _compare(model: H2AModel, path: Path, in_chans: int, size: int) -> tuple[float, float]:
    """Largest |ONNX - PyTorch| of raw and of the embedding over the check batches."""
    runner = OnnxRunner(path, threads=1)
    d_raw = d_emb = 0.0
    for n in CHECK_BATCHES:
        x, sex = _check_inputs(n, in_chans, size, seed=1)
        fmap = model.forward_features(x)
        ref_raw = model.forward_head(fmap, sex if model.use_sex else None).numpy()
        ref_emb = model.forward_head(fmap, pre_logits=True).numpy()
        raw, emb = runner.forward(x, sex.numpy())
        d_raw = max(d_raw, float(np.abs(raw - ref_raw).max()))
        d_emb = max(d_emb, float(np.abs(emb - ref_emb).max()))
    return d_raw, d_emb


def ensure_onnx(run_dir: str | Path) -> Path:
    """RUN/model.onnx, exported first when it is missing or older than the run's weights."""
    run_dir = Path(run_dir)
    path, weights = onnx_path(run_dir), weights_file(run_dir)
    with _EXPORT_LOCK:
        if not path.exists() or (weights is not None and path.stat().st_mtime < weights.stat().st_mtime):
            export_onnx(run_dir, path)
    return path


class OnnxRunner:
    """An exported graph in an onnxruntime CPU session; ``forward`` mirrors the model's.

    onnxruntime sessions may be run from several threads at once, so one runner serves a
    whole server. ``threads`` sets the intra-op threads (None: onnxruntime's default, one
    per core).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX graph at {self.path}")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS) or [o.name for o in self.session.get_outputs()] != list(OUTPUTS):
            raise ValueError(f"{self.path.name}: not an H2A graph (inputs {names}; H2A's are {list(INPUTS)})")
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        shape = self.session.get_inputs()[0].shape  # ['batch', C, S, S]
        self.image_shape = tuple(d if isinstance(d, int) else None for d in shape)
        self.use_sex = self.meta.get("h2a.use_sex", "1") == "1"

    def forward(self, x: np.ndarray | Tensor, sex: np.ndarray | Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images (N, C, S, S) and sex (N,) 1 = male -> raw (N,), embedding (N, D)."""
        if isinstance(x, Tensor):
            x = x.detach().cpu().float().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = self.image_shape[1:]
        if x.ndim != 4 or any(w is not None and w != d for w, d in zip(want, x.shape[1:], strict=True)):
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, want))}), got {x.shape}")
        n = x.shape[0]
        if sex is None:
            if self.use_sex:
                raise ValueError("this model was trained with sex as an input: pass sex "
                                 "(array of shape (N,), 1 = male, 0 = female)")
            sex = np.zeros(n, dtype=np.float32)
        if isinstance(sex, Tensor):
            sex = sex.detach().cpu().numpy()
        sex = np.ascontiguousarray(np.asarray(sex, dtype=np.float32).reshape(-1))
        if sex.shape[0] != n:
            raise ValueError(f"sex has {sex.shape[0]} values for a batch of {n}")
        raw, emb = self.session.run(list(OUTPUTS), {"image": x, "sex": sex})
        return raw, emb

    __call__ = forward
