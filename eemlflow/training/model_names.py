"""Whether a name is a timm model, answered without importing timm where it can: importing timm takes seconds
(it imports torch, torchvision and, through torchvision's ops, torch's compiler), and a sweep checks every cell's
model before it trains any, in a process that never builds one.

timm's names are kept in the user's cache folder, one file per installed timm (its version and where it lives),
written by the first check that needs them. The file only ever says yes: a name it lacks is asked of timm itself,
so that a stale or damaged file cannot refuse a real model; a file that cannot be written costs the import, no
more. Imports only the standard library, ``eemlflow.errors`` and ``eemlflow.atomic`` (timm when it must).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from eemlflow.atomic import atomic_write
from eemlflow.errors import EemlflowError

CACHE_ENV = "XDG_CACHE_HOME"  # the cache folder's root, as every freedesktop tool reads it; ~/.cache without it


def check_model_name(name: str) -> None:
    """Raise ``EemlflowError`` with the closest timm names when ``name`` (``arch`` or ``arch.tag``) is not a timm
    model."""
    if name.split(".", 1)[0] in _cached_names():
        return
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; `python -c \"import timm; print(timm.list_models('*net*'))\"` lists them")
    raise EemlflowError(f"unknown timm model {name!r}{hint}")


def cache_file() -> Path | None:
    """The file that lists the installed timm's model names; None when timm is not installed as a package or no
    cache folder can be named (a container's user without a home and no ``XDG_CACHE_HOME``)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    where = Path(next(iter(spec.submodule_search_locations)))
    models = where / "models"
    # An editable timm keeps its version while its files change: a model file added changes the folder's time.
    stamp = f"{where}|{models.stat().st_mtime_ns if models.is_dir() else 0}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    try:
        version = importlib.metadata.version("timm")
        root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache")
    except (importlib.metadata.PackageNotFoundError, RuntimeError):  # RuntimeError: Path.home() found no home
        return None
    return root / "eemlflow" / f"timm-{version}-{digest}-models.txt"


@functools.cache
def _cached_names() -> frozenset[str]:
    """The names in the cache file, written from timm's own list first when it is missing."""
    path = cache_file()
    if path is None:
        return frozenset()
    try:
        return frozenset(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        pass
    import timm

    names = timm.list_models()
    try:
        atomic_write(path, lambda f: f.write("\n".join(names) + "\n"))
    except OSError:  # a read-only home: every check asks timm, as before there was a cache
        pass
    return frozenset(names)
