"""A fast, exact tanh RNN over padded batches: both directions in one pass, hand-written BPTT.

`nn.RNN` over packed sequences is exact but slow on a CPU: packing is costly and autograd
records every time step. Here a batch stays padded and time-major, and

- the backward direction reads each text reversed in place (its real tokens first, its
  padding last), so for both directions the real steps come before the padding and no
  real state ever depends on a pad;
- the states live as (D, T, B, H): each direction's time steps are contiguous, and the
  directions (and slices of the batch) run side by side on the CPU's threads;
- `TanhRecurrence` stores the states of the forward pass and pushes gradients back
  through W_hh step by step, then forms dW_hh in one GEMM per direction after the loop;
- the time loop runs in C++ (pipeline/model/csrc/recurrence.cpp, compiled on first use for
  this CPU, its BLAS checked), with the same loop in PyTorch as the fallback where no compiler
  is available; `kernel_info()` says which ran, for the training summary.

The weights stay the `nn.RNN` module's own parameters (same names, same count), so a
checkpoint does not depend on which path ran. Outputs at padded steps are garbage by
design; every readout masks them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pipeline.core import files
from pipeline.core.errors import UserError


def compiled():
    """The C++ kernels (pipeline/model/csrc/recurrence.cpp), built once per machine; None if they cannot be.

    Safe under threads: a caller that arrives while another builds waits for that build
    instead of taking the PyTorch loop meanwhile.
    """
    global _KERNEL
    if _KERNEL is None:
        with _KERNEL_LOCK:
            if _KERNEL is None:
                _KERNEL = _load_kernel()
    return _KERNEL if isinstance(_KERNEL, ModuleType) else None


def kernel_info() -> dict[str, Any]:
    """Which recurrence runs in this process, for a training summary.

    {"recurrence": "compiled" or "fallback", "kernel": the built library's path or None,
    "blas": where the kernel's products go or None, "reason": why the fallback runs or None}.
    "blas" is {"library": path or None (None: ATen's addmm_), "version", "symbols":
    ["sgemm_", "dgemm_"], "integer_bits": 32 or None, "thread_cap": "MKL_Set_Num_Threads_Local" or None}.
    """
    kernel = compiled()
    if kernel is None:
        reason = _KERNEL if isinstance(_KERNEL, str) else "the PyTorch loop was chosen"
        return {"recurrence": "fallback", "kernel": None, "blas": None, "reason": reason}
    blas = kernel.blas_info()
    blas["integer_bits"] = 32 if blas["library"] is not None else None  # _blas_problem checked it
    return {"recurrence": "compiled", "kernel": kernel.__file__, "blas": blas, "reason": None}


def require_kernel(allow_fallback: bool) -> dict[str, Any]:
    """kernel_info(), or a UserError when the kernel cannot be used and the fallback is not allowed.

    PIPELINE_PURE_PYTORCH=1 chooses the fallback on purpose, so it is allowed either way.
    """
    info = kernel_info()
    deliberate = os.environ.get("PIPELINE_PURE_PYTORCH") == "1"
    if info["recurrence"] == "fallback" and not allow_fallback and not deliberate:
        raise UserError(
            f"the C++ recurrence cannot be used ({info['reason']}); fix that, or set "
            "train.allow_fallback: true to train with the slower PyTorch loop"
        )
    return info


def _load_kernel() -> ModuleType | str:
    """The checked kernel, or why the PyTorch loop runs instead."""
    if os.environ.get("PIPELINE_PURE_PYTORCH") == "1":
        return "PIPELINE_PURE_PYTORCH=1 chose the PyTorch loop"
    try:
        from torch.utils.cpp_extension import load

        kernel = _build(load)
    except Exception as exc:  # no compiler, no ninja, a read-only cache: slower, same maths
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # torch's message starts with the compile command; a compiler's own error says more.
        first = next((line[line.index("error:") :] for line in lines if "error:" in line), lines[0])
        reason = f"it did not build: {first[:120]}"
    else:
        problem = _blas_problem(kernel)
        if problem is None:
            return kernel
        reason = problem
    print(f"note: C++ recurrence unavailable ({reason}); using the PyTorch loop", file=sys.stderr)
    return reason


def _blas_problem(kernel: ModuleType) -> str | None:
    """Why the kernel's BLAS cannot be trusted, or None: both products checked against torch's."""
    for dtype in (torch.float32, torch.float64):
        problem = _gemm_problem(kernel, dtype)
        if problem is not None:
            return problem
    return None


def _gemm_problem(kernel: ModuleType, dtype: torch.dtype, address: int = 0) -> str | None:
    """Why the kernel's product in `dtype` (or the gemm at `address`) differs from torch's, or None.

    Small integers keep every sum exact, so any BLAS must match torch bit for bit. The sizes go
    in twice as 32-bit integers: followed by 32 zero bits, which a 64-bit-integer BLAS reads
    correctly too, then by -1, which it reads as negative sizes and rejects.
    """
    a = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 10]], dtype=dtype)
    b = torch.tensor([[2, 0, 1], [1, 3, 0], [0, 1, 4]], dtype=dtype)
    c = torch.tensor([[1, -1, 0], [0, 2, -2], [3, 0, 1]], dtype=dtype)
    expected = torch.addmm(c, a, b)
    right = []
    for high in (0, -1):
        out = c.clone()
        kernel.gemm_probe(out, a, b, high, address)
        right.append(torch.equal(out, expected))
    name = f"{'s' if dtype == torch.float32 else 'd'}gemm_ from {kernel.blas_info()['library']}"
    if not right[0]:
        return f"{name} computes a 3 x 3 product unlike torch"
    if not right[1]:
        return f"{name} reads 64-bit integers"
    return None


_SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"


def _build(load):
    """Compile once per machine, source version and Python environment, wherever the checkout lives.

    ninja rebuilds whenever the compile command changes, so whatever goes into it names the
    build folder: the source (a copy kept there, as torch rebuilds when a source path
    changes), and torch's and Python's include paths (a clone with its own venv). Otherwise a
    DVC experiment's temporary copy, a second clone or CI would rebuild each other's build.
    The CPU names it too: -march=native means another library on another CPU, where ours
    could die of an illegal instruction (a cache in a Docker image or a shared home folder).
    """
    source = _SOURCE.read_bytes()
    environment = f"{torch.__version__}\0{Path(torch.__file__).parent}\0{sys.base_prefix}\0{sys.version}"
    key = source + f"{environment}\0{_cpu_key()}".encode()
    name = f"pipeline_recurrence_{hashlib.sha256(key).hexdigest()[:12]}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import LIB_EXT

    library = folder / f"{name}{LIB_EXT}"  # where torch builds the library and loads it from
    # torch guards a build with a `lock` file that a killed process leaves behind, and every
    # later load then waits for it forever. Under this flock, which the kernel releases
    # however its holder ends, no other process is loading: a `lock` file found is stale.
    with open(folder / "pipeline.lock", "w") as guard, _pinned_ninja():
        fcntl.flock(guard, fcntl.LOCK_EX)
        if library.exists() and not _intact(library):
            # Truncated or overwritten (a full disk, a killed copy, a bad sector): loading it could
            # kill this process with SIGBUS, and ninja, going by dates, would never rebuild it.
            _clear(folder)
        copy = folder / "recurrence.cpp"
        if not copy.exists() or copy.read_bytes() != source:
            files.write_bytes(copy, source)
        for attempt in range(3):
            (folder / "lock").unlink(missing_ok=True)
            try:
                kernel = load(
                    name=name,
                    sources=[str(copy)],
                    build_directory=str(folder),
                    # -fopenmp: at::parallel_for runs its ranges in parallel only where _OPENMP is
                    # defined; without it, in this extension, it runs them one after another.
                    extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                )
            except FileNotFoundError:
                # A process of an older version, outside this flock, removed torch's lock file
                # under this load; the build itself is intact, so load again.
                if attempt == 2:
                    raise
                continue
            if not _intact(library):  # just built, or rebuilt by ninja: this is the library now
                files.write_text(_record(library), files.sha256_file(library) + "\n")
            return kernel
        raise AssertionError("unreachable")


def _record(library: Path) -> Path:
    """The file beside a built library that holds its sha256, written once it loaded."""
    return library.with_name(library.name + ".sha256")


def _intact(library: Path) -> bool:
    """Whether the library has the bytes it had when it last loaded; without a record it may be
    a build that was cut short, so it counts as damaged."""
    try:
        return _record(library).read_text().strip() == files.sha256_file(library)
    except OSError:
        return False


def _clear(folder: Path) -> None:
    """Empty a build folder for a fresh build; the flock's own file stays, its holder in it."""
    for entry in folder.iterdir():
        if entry.name == "pipeline.lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


_CPUINFO = Path("/proc/cpuinfo")
# The lines of a processor's entry that say what -march=native compiles for (x86, then ARM);
# not its clock or bogomips, which vary from one reading to the next.
_CPU_FIELDS = frozenset(
    ["vendor_id", "cpu family", "model", "model name", "flags"]
    + ["CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features"]
)


def _cpu_key() -> str:
    """The CPU as -march=native sees it: its model and instruction-set flags, and torch's ISA level."""
    try:
        first = _CPUINFO.read_text().split("\n\n")[0]  # the first core's entry: its cores share an ISA
    except OSError:
        first = ""  # not Linux: the platform's names below are all there is
    fields = {}
    for line in first.splitlines():
        field, _, value = line.partition(":")
        if field.strip() in _CPU_FIELDS:
            fields[field.strip()] = value.strip()
    identity = [platform.machine(), platform.processor(), torch.backends.cpu.get_cpu_capability()]
    return "\n".join(identity + [f"{field}: {value}" for field, value in sorted(fields.items())])


@contextlib.contextmanager
def _pinned_ninja() -> Iterator[None]:
    """Put the pinned ninja (the `ninja` package) first on PATH while torch runs ninja.

    ninja versions keep their build logs differently: with a system ninja on PATH in one
    shell and the venv's in another (an activated venv, `dvc repro`), each would find the
    other's build out of date and compile again, 20 s a time.
    """
    try:
        import ninja
    except ImportError:
        yield  # whichever ninja is on PATH, if any
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{path}"
    try:
        yield
    finally:
        os.environ["PATH"] = path


_KERNEL: ModuleType | str | None = None  # a str: why the kernel is unavailable
_KERNEL_LOCK = threading.Lock()


class TanhRecurrence(torch.autograd.Function):
    """h_t = tanh(pre_t + h_{t-1} W_d^T), h_0 = 0, for pre (D, T * B, H) and weight (D, H, H).

    Returns the states in pre's own buffer, in pre's shape: (D, T * B, H) or (D * T * B, H).
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight: torch.Tensor, steps: int) -> torch.Tensor:
        # flat is a fresh buffer from fused_rnn, and no other op's backward needs it: the
        # states are written into it in place, saving a (D, T, B, H) copy. It must not be a
        # view: autograd would then copy the whole base twice on the way back.
        ctx.mark_dirty(flat)
        pre = flat.view(weight.size(0), steps, -1, flat.size(-1))
        kernel = compiled() if pre.device.type == "cpu" else None
        if kernel is not None:
            kernel.forward_(pre, weight, torch.get_num_threads())
        else:
            # The same arithmetic as the C++ loop: tanh(z) = 2 sigmoid(2z) - 1 on s = (h + 1) / 2.
            pre.mul_(2).sub_(weight.sum(2).mul(2)[:, None, None, :])
            states, w4_t = pre.unbind(1), weight.mul(4).transpose(1, 2)  # states[t]: (D, B, H)
            prev = torch.full_like(states[0], 0.5)
            for state in states:
                prev = state.baddbmm_(prev, w4_t).sigmoid_()
            pre.mul_(2).sub_(1)
        ctx.save_for_backward(flat, weight)
        ctx.steps, ctx.shape = steps, flat.shape
        return flat

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        flat, weight = ctx.saved_tensors
        out = flat.view(weight.size(0), ctx.steps, -1, flat.size(-1))  # (D, T, B, H)
        grad_out = grad_out.view_as(out)
        kernel = compiled() if out.device.type == "cpu" else None
        if kernel is not None:
            grad = kernel.backward(grad_out, out, weight, torch.get_num_threads())
        else:
            slope = torch.addcmul(torch.ones_like(out), out, out, value=-1)  # tanh' = 1 - h^2
            # grad becomes dL/dpre in place: g_t = (dL/dh_t + g_{t+1} W) * (1 - h_t^2).
            grad = grad_out.clone(memory_format=torch.contiguous_format)
            g, s = grad.unbind(1), slope.unbind(1)
            g[-1].mul_(s[-1])
            for t in range(len(g) - 1, 0, -1):
                g[t - 1].baddbmm_(g[t], weight).mul_(s[t - 1])
        # dW_d = sum_t g_t^T h_{t-1}: every step at once, one GEMM per direction.
        directions, hidden = out.size(0), out.size(-1)
        grads = grad[:, 1:].reshape(directions, -1, hidden)
        states = out[:, :-1].reshape(directions, -1, hidden)
        return grad.view(ctx.shape), grads.transpose(1, 2) @ states, None


def reversal_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(T * B,) row index into time-major (T, B, F) rows that reverses each text's real steps
    and leaves its padding in place."""
    t = torch.arange(steps, device=lengths.device)[:, None]  # (T, 1)
    n = lengths.to(t.device)[None, :]  # (1, B)
    source_step = torch.where(t < n, n - 1 - t, t)  # (T, B)
    return (source_step * len(lengths) + torch.arange(len(lengths), device=t.device)).view(-1)


class Reversal(torch.autograd.Function):
    """Reverse each text of time-major x (T, B, F) with a reversal_index: one row gather.

    The index is its own inverse (step t < n reads n - 1 - t, whose reverse is t again;
    padding stays put), so the gradient is the same gather, where index_select's own
    backward would scatter-add into zeros, several times slower on a CPU and no different.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        return x.reshape(-1, x.size(-1)).index_select(0, rows).view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        return grad.reshape(-1, grad.size(-1)).index_select(0, rows).view(grad.shape), None


def _layer_weights(rnn: nn.RNN, layer: int, directions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's weight_ih (D, H, in), summed biases (D, H) and weight_hh (D, H, H)."""
    suffixes = [f"_l{layer}", f"_l{layer}_reverse"][:directions]
    w_ih = torch.stack([getattr(rnn, "weight_ih" + s) for s in suffixes])
    bias = torch.stack([getattr(rnn, "bias_ih" + s) + getattr(rnn, "bias_hh" + s) for s in suffixes])
    w_hh = torch.stack([getattr(rnn, "weight_hh" + s) for s in suffixes])
    return w_ih, bias, w_hh


def fused_rnn(
    rnn: nn.RNN,
    x: torch.Tensor,
    lengths: torch.Tensor,
    dropout: Callable[[torch.Tensor], torch.Tensor],
    embedding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run `rnn` (tanh) over time-major x (T, B, E), each text padded after its end.

    Returns the top layer's states (D, T, B, H). Direction 1, if any, is in reversed time:
    at step t < length it has read the text's last t + 1 tokens. So in both directions step
    length - 1 holds the final state, and pooling over the real steps needs no re-alignment.
    `dropout` acts between stacked layers, as in nn.RNN.

    With `embedding` (V, E), x holds token ids (T, B) and the first layer's input projection
    is looked up: every token's row of embedding @ W_ih^T + bias is computed once, a (D, V, H)
    table, instead of once per token. The same sums, and fewer of them when the batch holds
    more tokens than the vocabulary has rows; it needs the embeddings undropped.
    """
    directions = 2 if rnn.bidirectional else 1
    steps, batch = x.shape[:2]
    index = reversal_index(lengths, steps) if directions == 2 else None
    out = x
    for layer in range(rnn.num_layers):
        w_ih, bias, w_hh = _layer_weights(rnn, layer, directions)
        if layer == 0 and embedding is not None:
            table = torch.baddbmm(bias[:, None, :], embedding.expand(directions, -1, -1), w_ih.transpose(1, 2))
            ids = x.reshape(-1)  # (T * B,) time-major
            rows = ids if index is None else torch.cat([ids, ids[index] + len(embedding)])  # (D * T * B,)
            # Left flat: the recurrence overwrites this fresh buffer in place, which a view is not.
            pre = table.view(-1, table.size(-1)).index_select(0, rows)  # (D * T * B, H)
        else:
            if layer > 0:
                # The next layer reads both directions in text order: (T, B, D * H).
                halves = [out[0]] if index is None else [out[0], Reversal.apply(out[1], index)]
                x = dropout(torch.cat(halves, dim=-1))
            inputs = [x] if index is None else [x, Reversal.apply(x, index)]  # each direction's reading order
            flat = torch.stack(inputs).view(directions, steps * batch, x.size(-1))  # (D, T * B, in)
            pre = torch.baddbmm(bias[:, None, :], flat, w_ih.transpose(1, 2))  # (D, T * B, H)
        out = TanhRecurrence.apply(pre, w_hh, steps).view(directions, steps, batch, -1)  # (D, T, B, H)
    return out


if __name__ == "__main__":
    # `make install` builds the kernels here, so no training stage pays the one-time compile.
    info = kernel_info()
    print(f"C++ recurrence: {info['kernel']}" if info["kernel"] else f"C++ recurrence: unavailable ({info['reason']})")
