"""The training step in C++ (training/native_step.cpp): built once per machine, then loaded.

Why: at inClust+'s size a CPU step is ~150 small ops. From Python each one pays its argument
parsing and, with the step worker (training/step_worker.py), GIL hand-overs between two threads;
together that was about a third of a step on the 2-core machine of BENCHMARKS.md (3.4 ms against
2.3 ms in C++). The C++ step runs the same ATen ops in the same order on the same data, so it
computes the same bits (tests/test_training_native_step.py holds it to the Python step), with the
GIL released for a whole run of steps and a worker thread that never needs it.

It is built with torch's extension builder (a C++ compiler and ninja; ~30 s once) into a cache
folder keyed by the source, torch and Python: ``$INCLUST_NATIVE_CACHE`` or
``~/.cache/inclust-plus/native``. ``scripts/setup.sh`` builds it; ``inclust-train`` builds it on
first use where it can (``training.native = "auto"``), and trains with the Python step where it
cannot, saying why once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from inclust_plus import interrupt
from inclust_plus.errors import InclustError

from .module import L2_EPS

log = logging.getLogger("inclust_plus.training")

SOURCE = Path(__file__).with_name("native_step.cpp")
MODULE = "inclust_native_step"
_loaded: dict[str, object] = {}


class NativeUnavailable(RuntimeError):
    """The C++ step could not be built or loaded here (the message says why)."""


def cache_folder() -> Path:
    """Where this source's build lives for this torch and Python (one folder per combination)."""
    root = Path(os.environ.get("INCLUST_NATIVE_CACHE") or Path.home() / ".cache" / "inclust-plus" / "native")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    return root / key


def _library(folder: Path) -> Path | None:
    found = sorted(folder.glob(f"{MODULE}*.so")) + sorted(folder.glob(f"{MODULE}*.pyd"))
    return found[0] if found else None


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ninja wheel (the ``train`` extra) puts it in the
    environment's bin folder, which is not on PATH when the environment is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def build(folder: Path | None = None, verbose: bool = False):
    """Compile the C++ step, put the library into ``folder`` (default: :func:`cache_folder`) and
    load it. It is built in a private folder beside and moved in whole, so a process that loads it
    meanwhile (an ensemble's worker, another run) never sees half a library."""
    folder = folder or cache_folder()
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise NativeUnavailable("no C++ compiler (c++, g++ or clang++) on PATH")
    from torch.utils import cpp_extension  # imports setuptools: only when building

    _ninja_on_path()
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise NativeUnavailable("ninja is not installed (pip install ninja)") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{folder.name}.build-", dir=folder.parent))
    try:
        try:
            module = cpp_extension.load(MODULE, [str(SOURCE)], extra_cflags=["-O2"], build_directory=str(scratch), verbose=verbose)
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            named = [line for line in lines if "error:" in line] or lines or [type(exc).__name__]  # the compiler's first error
            raise NativeUnavailable(f"building {SOURCE.name} failed: {named[0]}") from exc
        library = _library(scratch)
        if library is None:
            raise NativeUnavailable(f"the build left no {MODULE} library")
        folder.mkdir(exist_ok=True)
        os.replace(library, folder / library.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return module


def load(allow_build: bool = True):
    """The built C++ step module; built first when it is not yet and ``allow_build``.
    Raises :class:`NativeUnavailable` with the reason where it cannot be had."""
    folder = cache_folder()
    known = _loaded.get(str(folder))
    if isinstance(known, NativeUnavailable):  # a build fails once per process, not once per run
        raise known
    if known is not None:
        return known
    library = _library(folder)
    if library is None and not allow_build:
        raise NativeUnavailable(f"not built yet (python -m inclust_plus.training.native_step builds it into {folder})")
    try:
        if library is not None:
            module = _import(library)
        else:
            # a notice, at warning level so that it shows where nothing configured logging (the CLI, a notebook)
            log.warning("building the C++ training step once for this torch and Python (~30 s; training.native = \"off\" skips it)")
            module = build(folder)
    except NativeUnavailable as exc:
        _loaded[str(folder)] = exc
        raise
    _loaded[str(folder)] = module
    return module


_ACTIVATION_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2, "identity": 3}  # native_step.cpp's Act
# Steps per call: as many as take ~CALL_SECONDS (at most MAX_STEPS_PER_CALL), so that Ctrl-C, seen
# between calls, stops a run within a fraction of a second whatever a step costs.
MAX_STEPS_PER_CALL, CALL_SECONDS = 64, 0.2


class NativeSteps:
    """Steps of :class:`~.manual_step.ManualStep` ``manual``'s network run in C++ on ``rows``'s
    dense table (training/batches.py): each member's noise from ``noises``, the work off the step's
    chain on a C++ worker thread when ``threaded``."""

    def __init__(self, module, manual, rows, bernoulli, unsupervised: bool, noises: list[torch.Generator], threaded: bool):
        net, flat, c = manual.net, manual.flat, manual.net.config
        e = net.n_encoder
        one_hot, unlabeled = rows.label_tables
        shape = [e, len(c.decoder_hidden), c.latent_dim, net.weights[e + 2].shape[1], _ACTIVATION_CODES[c.activation],
                 _ACTIVATION_CODES[c.output_activation], int(c.input_normalization == "l2"), int(unsupervised)]
        shared = isinstance(bernoulli, bool)
        self._steps = module.Steps(
            [p.data for p in net.weights], [p.data for p in net.biases], [p.grad for p in net.weights], [p.grad for p in net.biases],
            [flat.heads[0], flat.heads_bias[0], flat.heads[1], flat.heads_bias[1]],
            [net.covariate_embedding.data, net.prior_means.data, net.covariate_embedding.grad, net.prior_means.grad],
            [flat.data, flat.grad, flat.exp_avg, flat.exp_avg_sq, flat.steps],
            [rows.x, rows.row_cell, rows.row_input, rows.row_output, rows.masks, rows.cell_covariate, one_hot, unlabeled],
            None if shared else bernoulli, bool(bernoulli) if shared else False, shape, list(noises), threaded)
        self._per_call = min(4, MAX_STEPS_PER_CALL)  # the first call's steps; then sized by the time they took

    def close(self) -> None:
        """Stop the C++ worker thread (the steps' object is done with)."""
        self._steps.close()

    def epoch(self, epoch_rows: torch.Tensor, steps: int, batch_size: int, weights, lrs: list[float], sums: torch.Tensor) -> None:
        """The ``steps`` steps of the epoch ``epoch_rows`` [K, rows], step s at learning rate ``lrs[s]``;
        each step's loss terms times its batch size are added to ``sums`` [len(TERMS), K]. They run
        in calls of as many steps as take ~CALL_SECONDS, with a Ctrl-C/SIGTERM check before each."""
        first = 0
        while first < steps:
            interrupt.check()  # stop between runs of steps: nothing is written
            end = min(steps, first + self._per_call)
            t0 = time.perf_counter()
            self.run(epoch_rows, first, end, batch_size, weights, lrs[first:end], sums)
            took = max(time.perf_counter() - t0, 1e-6)
            self._per_call = max(1, min(MAX_STEPS_PER_CALL, int(CALL_SECONDS * (end - first) / took)))
            first = end

    def run(self, epoch_rows: torch.Tensor, first: int, end: int, batch_size: int, weights, lrs: list[float],
            sums: torch.Tensor) -> None:
        """Steps ``first`` to ``end`` of the epoch ``epoch_rows`` in one call (the GIL released)."""
        self._steps.run(epoch_rows, first, end, batch_size,
                        [weights.reconstruction, weights.kl, weights.categorical, weights.label], lrs, L2_EPS, sums)


def available(mode: str):
    """The C++ step module for ``training.native`` = ``mode``, or None for the Python step: "off",
    or for "auto" a step that cannot be built here (said once per process, with the reason). "on"
    makes that a one-line error instead."""
    if mode == "off":
        return None
    first_try = str(cache_folder()) not in _loaded
    try:
        return load()
    except NativeUnavailable as exc:
        if mode == "on":
            raise _required(str(exc)) from exc
        if first_try:
            log.warning(f"training with the Python step: the C++ step is not available ({exc})")
        return None


def _required(why: str) -> InclustError:
    return InclustError(f'training.native = "on" but the C++ training step cannot run: {why}',
                        'set training.native = "auto" to train with the Python step (the same result, slower)')


def native_steps(mode: str, manual, rows, bernoulli, unsupervised: bool, noises, threaded: bool) -> NativeSteps | None:
    """The C++ steps for this run (see :func:`available`), or None for the Python step, which also
    runs what the C++ step does not cover: a device other than the CPU, or a sparse table."""
    if mode != "off" and (rows.device.type != "cpu" or rows.sparse):
        if mode == "on":
            raise _required("it trains on the CPU from a dense table only (this run: "
                            + ("a sparse table" if rows.sparse else rows.device.type) + ")")
        return None
    module = available(mode)
    return None if module is None else NativeSteps(module, manual, rows, bernoulli, unsupervised, noises, threaded)


if __name__ == "__main__":  # python -m inclust_plus.training.native_step: build it now (scripts/setup.sh)
    try:
        load()
    except NativeUnavailable as exc:
        print(f"the C++ training step is not available: {exc}; training uses the Python step", file=sys.stderr)
        sys.exit(0)
    print(f"C++ training step ready: {cache_folder()}")
