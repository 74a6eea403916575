"""Eager megatron-core on CPU, without importing the compiler it would not use.

megatron-core decorates a few elementwise functions (``quick_gelu``, the bias-GeLU/SwiGLU
fusions) with ``megatron.core.jit.jit_fuser``, which is ``torch.compile``. On CPU the
toolkit turns compilation off (``TORCH_COMPILE_DISABLE=1``: ~20 s of compilation per
process for no gain at these sizes), yet the decorators still run at import time, and
``torch.compile`` imports TorchDynamo and Inductor (with sympy and networkx) to build its
wrappers: about 2 of the ~7 seconds every rank spends importing the runtime, paid again by
every rank of every job. :func:`run_eagerly` turns compilation off and makes megatron-core's
``jit_fuser`` the identity (megatron's own ``disable_jit_fuser``) as soon as its ``jit``
module is imported, so the decorated functions are the plain functions that the disabled
``torch.compile`` wrappers would have called anyway: the same numbers, seconds earlier.

``wandb``, which megatron-core imports at import time whether or not anyone logs to it
(another ~0.7 s), is deferred the same way: the module is created empty and loaded on the
first attribute anyone reads (the wandb tracker, ``runtime/train/trackers.py``).

Torch-free: call it before torch or megatron-core is imported (``train.py``, the ``eval``
and ``export`` commands); later calls only set the environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

COMPILE_DISABLE = "TORCH_COMPILE_DISABLE"


def run_eagerly() -> None:
    """torch.compile off (unless the environment already says otherwise) and, when it is
    off, neither TorchDynamo nor wandb imported until something really uses them."""
    os.environ.setdefault(COMPILE_DISABLE, "1")
    if os.environ[COMPILE_DISABLE] != "1":
        return
    _once(_AfterImport("megatron.core.jit", lambda jit: jit.disable_jit_fuser()))
    _once(_Deferred("wandb"))


def _once(finder: importlib.abc.MetaPathFinder) -> None:
    """Install ``finder`` first on the import path, unless the module is already imported
    or a finder for it is already installed."""
    if finder.name in sys.modules or any(type(f) is type(finder) and f.name == finder.name for f in sys.meta_path):
        return
    sys.meta_path.insert(0, finder)


class _OneModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ONE module with the other finders, once (it removes itself), and adjusts the spec."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        return None if spec is None else self.adjust(spec)

    def adjust(self, spec: importlib.machinery.ModuleSpec) -> importlib.machinery.ModuleSpec:
        raise NotImplementedError


class _AfterImport(_OneModuleFinder):
    """Runs ``then(module)`` right after the module's own code."""

    def __init__(self, name: str, then) -> None:
        super().__init__(name)
        self.then = then

    def adjust(self, spec):
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader, then) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.then(module)


class _Deferred(_OneModuleFinder):
    """Creates the module empty; its code runs on the first attribute read from it.

    Not ``importlib.util.LazyLoader``: its module loads on ANY attribute access, including
    the ``__spec__`` that a second ``import wandb`` statement reads (megatron-core has two).
    """

    def adjust(self, spec):
        spec.loader = _DeferredLoader(spec.loader)
        return spec


class _DeferredLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return _DeferredModule(spec.name)

    def exec_module(self, module) -> None:
        # A package's __path__ is held back too: importing a submodule reads it, and a
        # submodule must not run before its package's own code.
        module.__dict__["_deferred"] = (self.loader, module.__dict__.pop("__path__", None))


class _DeferredModule(types.ModuleType):
    def __getattr__(self, name: str):  # only for names not (yet) in the module
        deferred = self.__dict__.pop("_deferred", None)
        if deferred is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        loader, path = deferred
        if path is not None:
            self.__path__ = path
        self.__class__ = types.ModuleType  # from here on an ordinary module
        loader.exec_module(self)  # the real code, into this same module object
        return getattr(self, name)
