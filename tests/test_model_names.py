"""A model's name is checked from a cached list of timm's names, so that a sweep's own process, which checks every
cell's model and trains none, never imports torch or timm; the list only ever says yes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import cli_env

from eemlflow.errors import EemlflowError
from eemlflow.training import model_names
from eemlflow.training.model_names import CACHE_ENV, cache_file, check_model_name

HEAVY = ("torch", "timm", "torchvision")  # seconds to import; codecarbon (0.2 s) the sweep needs


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own, and the process's memory of the list forgotten before and after."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model_names._cached_names.cache_clear()
    yield tmp_path / "cache"
    model_names._cached_names.cache_clear()


def fresh_process(code: str, cache) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**cli_env(), CACHE_ENV: str(cache)})


def test_the_first_check_writes_timms_names_and_a_later_process_checks_without_importing_timm(empty_cache):
    check_model_name("test_resnet")
    listed = cache_file().read_text().split()
    assert cache_file().parent == empty_cache / "eemlflow" and {"test_resnet", "resnet18", "vit_base_patch16_224"} <= \
        set(listed) and len(listed) > 1000
    probe = ("import sys; from eemlflow.training.model_names import check_model_name as c; "
             "c('test_resnet'); c('resnet18.a1_in1k'); "  # a name with a pretrained tag is its architecture's
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = fresh_process(probe, empty_cache)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]


def test_a_list_that_lacks_a_model_asks_timm_and_an_unknown_name_gets_close_ones(empty_cache):
    cache_file().parent.mkdir(parents=True)
    cache_file().write_text("resnet18\n")  # stale or damaged: test_resnet missing
    check_model_name("test_resnet")
    with pytest.raises(EemlflowError, match=r"unknown timm model 'resnet181'; did you mean resnet18"):
        check_model_name("resnet181")


def test_without_a_home_or_cache_folder_every_check_asks_timm(empty_cache, monkeypatch):
    """A container's user may have no home directory (``Path.home()`` raises) and no ``XDG_CACHE_HOME``."""
    from pathlib import Path

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cache_file() is None
    check_model_name("test_resnet")
    with pytest.raises(EemlflowError, match="unknown timm model 'resnet181'"):
        check_model_name("resnet181")


def test_a_sweeps_own_process_checks_its_grid_without_importing_torch(empty_cache, tmp_path, store):
    check_model_name("resnet18")  # the cache, as the first check on this machine leaves it
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  - {model: [test_resnet, resnet18], dataset: digits, epochs: 1}\n")
    probe = ("import sys; from eemlflow.sweep.__main__ import main; "
             f"code = main([{str(grid)!r}, '--dry-run', '--tracking-uri', {store!r}]); "
             f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = fresh_process(probe, empty_cache)
    assert "2 cells: 0 done, 0 running, 0 resumable, 0 failed, 2 pending" in result.stdout, result.stderr[-2000:]
    assert result.stdout.strip().endswith("0 []"), result.stdout
