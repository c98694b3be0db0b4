"""Your own data: an image-folder dataset (train/<class>/*.png, val/<class>/*.png) written as real PNG files, trained
with the study's recipe, identified by its content, refused in one line when it is laid out wrong."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_folders import write_digit_folder, write_mnist
from mlflow.tracking import MlflowClient
from PIL import Image

from eemlflow.errors import EemlflowError
from eemlflow.sweep.__main__ import main as sweep_main
from eemlflow.sweep.grid import Cell
from eemlflow.training.config import TrainConfig

TINY = ["--model", "test_resnet", "--img-size", "16", "--workers", "0", "--no-system-metrics"]


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> Path:
    """All 1,797 digits as PNGs: 1,438 in train/, 359 in val/."""
    return write_digit_folder(tmp_path_factory.mktemp("data") / "digits-png")


def all_runs(store: str) -> list:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_png_folder_trains_with_the_studys_recipe_and_exports_its_row(store, run_main, digit_pngs):
    from eemlflow.export import main as export_main
    from eemlflow.train import main as train_main

    # The README's digits settings (8 epochs, batch 32, lr 0.2, 32 px, no workers), on the tiny test model.
    result = run_main(train_main, ["--dataset", "folder", "--data-dir", str(digit_pngs), "--model", "test_resnet",
                                   "--epochs", "8", "--batch-size", "32", "--lr", "0.2", "--img-size", "32",
                                   "--workers", "0", "--no-system-metrics"], tracking_uri=store)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(store)
    params = run.data.params
    assert params["dataset"] == "folder" and params["dataset_name"] == "folder:digits-png"
    assert (params["train_images"], params["eval_images"], params["num_classes"]) == ("1438", "359", "10")
    assert params["dataset_source"] == str(digit_pngs.resolve()) and len(params["dataset_digest"]) == 16
    assert params["resolved_data_path"] == "cpu"
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"folder:digits-png-training", "folder:digits-png-eval"}
    assert inputs["folder:digits-png-training"].digest == f"{params['dataset_digest'][:8]}-1438"
    exported = run_main(export_main, ["--with-extras", "--output", "-"], tracking_uri=store)
    assert exported.returncode == 0, exported.stderr
    [row] = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert row["dataset"] == "folder:digits-png" and float(row["eval_top1"]) >= 85, row["eval_top1"]
    seen = 8 * (1438 // 32) * 32  # the real image count, full batches only
    assert float(row["j_per_image"]) == pytest.approx(float(row["energy_consumed"]) * 3.6e6 / seen, rel=1e-6)


def test_the_same_folder_elsewhere_is_the_same_cell_and_one_changed_file_another(tmp_path):
    first = write_digit_folder(tmp_path / "a" / "digits", per_split=40)
    moved = tmp_path / "b" / "renamed"
    shutil.copytree(first, moved)

    def cell_id(folder: Path) -> str:
        return Cell(TrainConfig(dataset="folder", data_dir=str(folder), epochs=1)).cell_id

    assert cell_id(first) == cell_id(moved)
    assert cell_id(first) != Cell(TrainConfig(dataset="digits", data_dir=str(first), epochs=1)).cell_id
    changed = next((moved / "train" / "0").iterdir())
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(changed)  # another image, another size
    assert cell_id(moved) != cell_id(first)


def _no_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def _empty_val(root: Path) -> None:
    for png in (root / "val").rglob("*.png"):
        png.unlink()


def _stray_class(root: Path) -> None:
    (root / "val" / "7").rename(root / "val" / "seven")


def _loose_image(root: Path) -> None:
    shutil.copy(next((root / "train" / "1").iterdir()), root / "train" / "loose.png")


BAD_FOLDERS = [
    (lambda root: shutil.rmtree(root), [], "folder dataset {root} does not exist"),
    (lambda root: shutil.rmtree(root / "train"), [], "{root} has no train/ or training/ folder"),
    (_no_val, [], "{root} has no val/ or validation/ folder"),
    (_empty_val, [], "{root}/val has no images"),
    (_stray_class, [], "{root}/val has classes that train/ lacks: seven"),
    (_loose_image, [], "{root}/train has images outside a class folder"),
    (lambda root: None, ["--batch-size", "64"], "batch_size 64 is larger than the 40 training images"),
    (lambda root: None, ["--data-path", "gpu"], "data_path=gpu keeps the images on the device, but dataset=folder"),
]


@pytest.mark.parametrize("case", range(len(BAD_FOLDERS)), ids=[m.split(": ")[0] for *_, m in BAD_FOLDERS])
def test_a_folder_laid_out_wrong_is_one_line_and_no_run(store, tmp_path, run_main, case):
    from eemlflow.train import main as train_main

    spoil, args, message = BAD_FOLDERS[case]
    root = write_digit_folder(tmp_path / "pngs", per_split=40)
    spoil(root)
    result = run_main(train_main, ["--dataset", "folder", "--data-dir", str(root), "--epochs", "1",
                                   "--batch-size", "8", *TINY, *args], tracking_uri=store)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("eemlflow: error:")]
    assert len(errors) == 1 and message.format(root=root.resolve()) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs(store) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_fails_the_run_naming_the_file_instead_of_being_skipped(store, tmp_path, run_main, workers):
    from eemlflow.train import main as train_main

    root = write_digit_folder(tmp_path / "pngs", per_split=40)
    broken = sorted((root / "train" / "3").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])  # the header survives, the pixels do not
    result = run_main(train_main, ["--dataset", "folder", "--data-dir", str(root), "--epochs", "1", "--batch-size",
                                   "8", "--seed", "1", *TINY[:-3], "--workers", str(workers), "--no-system-metrics"],
                      tracking_uri=store)
    assert result.returncode == 1, result.stderr[-2000:]
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("eemlflow: training failed:")]
    assert f"UnreadableImage: image {broken.resolve()} cannot be read" in line and "marked FAILED" in line, line
    assert "Traceback" not in result.stderr
    [run] = all_runs(store)
    assert run.info.status == "FAILED" and str(broken.resolve()) in run.data.tags["eemlflow.error"]
    assert "Original Traceback" not in run.data.tags["eemlflow.error"]


def test_fast_mode_on_a_folder_streams_it_through_the_cpu_loader():
    cfg = TrainConfig(dataset="folder", mode="fast")
    assert cfg.resolved_data_path == "cpu" and cfg.precision == "bf16"
    assert TrainConfig(dataset="digits", mode="fast").resolved_data_path == "gpu"
    with pytest.raises(EemlflowError, match="dataset=folder streams them from disk"):
        TrainConfig(dataset="folder", data_path="gpu")


def test_a_sweep_grid_names_a_folder_dataset_like_any_other(store, tmp_path, run_main):
    root = write_digit_folder(tmp_path / "pngs", per_split=40)
    grid = tmp_path / "folder.yaml"
    grid.write_text(f"name: pngs\nexperiment: pngs\nsettings:\n  model: test_resnet\n  dataset: folder\n"
                    f"  data_dir: {root}\n  epochs: 1\n  img_size: 16\n  workers: 0\n"
                    "grid:\n  - batch_size: [16]\n")  # one cell: the folder's resolution is the point
    result = run_main(sweep_main, [str(grid), "--no-report"], tracking_uri=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 trained, 0 already done" in result.stderr
    children = [r for r in all_runs(store) if "eemlflow.cell_id" in r.data.tags]
    assert len(children) == 1 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.params["dataset_name"] for r in children} == {"folder:pngs"}
    assert {r.data.params["train_images"] for r in children} == {"40"}
    missing = tmp_path / "gone.yaml"
    missing.write_text(grid.read_text().replace(str(root), str(tmp_path / "gone")))
    refused = run_main(sweep_main, [str(missing), "--no-report"], tracking_uri=store)
    assert refused.returncode == 2 and "folder dataset" in refused.stderr and "does not exist" in refused.stderr


def test_timms_torch_names_load_torchvisions_files_offline_and_say_in_one_line_when_they_are_missing(
        store, tmp_path, run_main):
    from eemlflow.train import main as train_main

    data = write_mnist(tmp_path / "data", per_split=200)
    result = run_main(train_main, ["--dataset", "torch/mnist", "--data-dir", str(data), "--epochs", "1",
                                   "--batch-size", "32", *TINY], tracking_uri=store)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(store)
    assert run.info.status == "FINISHED" and run.data.params["dataset_name"] == "torch/mnist"
    assert (run.data.params["train_images"], run.data.params["num_classes"]) == ("200", "10")  # 1-channel, fed as RGB
    for args, message in ((["--dataset", "torch/mnist", "--data-dir", str(tmp_path / "empty")],
                           "torch/mnist: not in"),
                          (["--dataset", "torch/nosuch"], "unknown dataset 'torch/nosuch'")):
        refused = run_main(train_main, [*args, "--epochs", "1", *TINY], tracking_uri=store)
        errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("eemlflow: error:")]
        assert refused.returncode == 2 and len(errors) == 1 and message in errors[0], refused.stderr
    assert "download=true" in errors[0] or "torch/mnist" in errors[0]
    assert len(all_runs(store)) == 1
