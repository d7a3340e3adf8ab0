"""Optional dependencies: which install extra provides a missing module, in one line.

The cpu install (``pip install -e '.[cpu]'``) serves traffic without torch, onnx or
matplotlib; training, export and plots need the ``train`` extra. A command that
needs a missing module says so in one line instead of a traceback.
"""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "MissingExtra", "missing_extra_line"]

#: Top-level module -> the extra of pyproject.toml that installs it.
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "onnx": "train",
    "onnxscript": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "lightgbm": "train",
    "safetensors": "train",
    "onnxruntime": "cpu",
}


class MissingExtra(RuntimeError):
    """A command's work is done as far as it could go without an optional module.

    Parameters
    ----------
    message : str
        One line for people: what is missing, which extra provides it.
    """


def missing_extra_line(exc: ModuleNotFoundError, what: str) -> str | None:
    """One line naming the extra that provides the module ``exc`` is about.

    Parameters
    ----------
    exc : ModuleNotFoundError
    what : str
        What needed it, e.g. ``triage-model mii``.

    Returns
    -------
    str or None
        None when the module is not one of an extra (a real bug: let it raise).
    """
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    if extra == "cpu":
        hint = "pip install -e '.[cpu]' (or '.[gpu]' on GPU machines)"
    else:
        hint = f"pip install -e '.[{extra}]'"
    return f"{what} needs the '{extra}' extra ({module} is not installed): {hint}"
