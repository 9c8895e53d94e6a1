"""Helpers shared by the official-code fixture generators (HAMMER/ASAP in `dgm4.py`, ForgeryTalker in `forgerytalker.py`).

Nothing here imports official code or forgrepro: it runs in whatever environment the official code needs.

- `official_checkout`: import an official repository from its checkout (on `sys.path`, modules purged afterwards,
  so two repositories that both call their package `models` can be used one after the other in one process).
- `RecordLocals`: the local variables of one official function at its return (losses, intermediates) through
  `sys.settrace`, so the official code runs unmodified and still yields every per-term loss.
- `perturb_`, `perturb_teacher_`, `fill_unit_columns_`: seeded, non-trivial weights (LayerNorm weights and biases,
  position embeddings, biases all away from their init values) and fixed queue contents.
- `save_fixture`: safetensors with JSON metadata, size reported.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["official_checkout", "parameters_on_meta", "RecordLocals", "perturb_", "perturb_teacher_", "fill_unit_columns_", "save_fixture",
           "patched", "single_process_group"]

POSITIONAL = ("pos_embed", "cls_token", "cls_token_local", "position_embeddings", "token_type_embeddings")


@contextlib.contextmanager
def official_checkout(path: str | Path, packages: Iterable[str]) -> Iterator[Path]:
    "Put an official checkout first on `sys.path`; on exit remove it and purge its top-level `packages` from sys.modules."
    path = Path(path).resolve()
    if not path.is_dir(): raise FileNotFoundError(f"official checkout {path} does not exist")
    packages = tuple(packages)

    def purge():
        for name in list(sys.modules):
            if name.split(".")[0] in packages: del sys.modules[name]

    purge()
    sys.path.insert(0, str(path))
    try:
        yield path
    finally:
        sys.path.remove(str(path))
        purge()


@contextlib.contextmanager
def patched(obj, name: str, value):
    "Temporarily replace `obj.name` (environment-only patches: hub loaders, hard-coded encoder sizes)."
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def single_process_group(tmp: Path):
    "A 1-process gloo group (the official `concat_all_gather` calls `torch.distributed.get_world_size`)."
    import torch.distributed as dist
    init = not dist.is_initialized()
    if init:
        dist.init_process_group("gloo", init_method=f"file://{Path(tmp).resolve() / 'dist_store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        if init: dist.destroy_process_group()


@contextlib.contextmanager
def parameters_on_meta():
    """Every parameter registered inside the block lives on the meta device (no memory, no init cost); plain tensors
    (e.g. `torch.linspace(...).item()` in constructors) stay on the CPU, so full-size models build as written."""
    register = nn.Module.register_parameter

    def to_meta(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class RecordLocals:
    "Record the local variables of every call of `fn` at its return (`with RecordLocals(f) as r: ...; r.calls[-1]`)."

    def __init__(self, fn):
        self.code = getattr(fn, "__code__", None) or fn.__func__.__code__
        self.calls: list[dict] = []

    def __enter__(self) -> "RecordLocals":
        self.previous = sys.gettrace()

        def local(frame, event, arg):
            if event == "return": self.calls.append(dict(frame.f_locals))
            return local

        def tracer(frame, event, arg):
            return local if (event == "call" and frame.f_code is self.code) else None

        sys.settrace(tracer)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self.previous)

    @property
    def last(self) -> dict:
        if not self.calls: raise RuntimeError(f"{self.code.co_name} was never called")
        return self.calls[-1]


def _layer_norm_params(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}


@torch.no_grad()
def perturb_(module: nn.Module, seed: int, skip: tuple[str, ...] = (), ln_std: float = 0.2, bias_std: float = 0.1,
             embed_std: float = 0.5) -> nn.Module:
    """Seeded weights that exercise every parameter (in sorted name order; names starting with `skip` untouched).

    LayerNorm weight 1 + N(0, ln_std²), every bias N(0, bias_std²), position / [CLS] / type embeddings
    N(0, embed_std²), other matrices N(0, 1/fan_in) (so attention is far from uniform); 0-d parameters are left to
    the caller (temperatures, scales)."""
    g = torch.Generator().manual_seed(seed)
    ln = _layer_norm_params(module)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if name.startswith(skip) or p.ndim == 0: continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
        leaf = name.split(".")[-1]
        if id(p) in ln and leaf == "weight": value = 1 + ln_std * noise
        elif leaf.endswith("bias"): value = bias_std * noise
        elif leaf in POSITIONAL or any(k in name for k in POSITIONAL): value = embed_std * noise
        else: value = noise / math.sqrt(p[0].numel() if p.ndim > 1 else p.numel())
        p.copy_(value.to(p.dtype))
    return module


@torch.no_grad()
def perturb_teacher_(pairs: Iterable[tuple[nn.Module, nn.Module]], seed: int, rel: float = 0.1) -> None:
    "Momentum teacher = student + rel·std(student)·N(0, 1), parameter by parameter (a fixed state unlike a fresh copy)."
    g = torch.Generator().manual_seed(seed)
    for online, ema in pairs:
        for p, q in zip(online.parameters(), ema.parameters()):
            scale = p.double().std() if p.numel() > 1 else p.double().abs()
            q.copy_((p.double() + rel * scale * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(q.dtype))


@torch.no_grad()
def fill_unit_columns_(buffer: Tensor, seed: int) -> None:
    "Fill a (D, K) queue with seeded L2-normalised columns."
    g = torch.Generator().manual_seed(seed)
    buffer.copy_(torch.nn.functional.normalize(torch.randn(buffer.shape, generator=g, dtype=torch.float64), dim=0))


def save_fixture(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, object]) -> int:
    "Write `tensors` (contiguous CPU copies) and JSON-encoded `metadata` to a safetensors file; returns its size in bytes."
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, str(path), metadata={k: json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    return path.stat().st_size
