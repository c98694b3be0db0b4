"""Export and ingest against real MLflow stores: sqlite files and a live `mlflow server` over HTTP."""

from __future__ import annotations

import csv
import io
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_env, run_cli
from mlflow.tracking import MlflowClient
from services import MlflowServer

from eemlflow.export import main as export_main
from eemlflow.ingest import main as ingest_main
from eemlflow.runner import train_run
from eemlflow.store import connect, convert, schema
from eemlflow.store.export import collect_rows, write_csv
from eemlflow.store.ingest import ingest, read_csv
from eemlflow.training.config import TrainConfig


def study_rows(n: int) -> list[dict[str, str]]:
    """Rows in the study's schema with the awkward values the published CSV has."""
    rows = []
    for i in range(n):
        energy = [1.5e-05 * (i + 1), 0.0123 * (i + 1), 7.25e-4 * (i + 1)]
        rows.append({
            "timestamp": f"2025-03-{1 + i % 28:02d}T{i % 24:02d}:15:{i % 60:02d}",
            "project_name": "ee-training",
            "run_id": f"{i:08d}-aaaa-bbbb-cccc-{i:012d}",
            "experiment_id": f"{9000 + i % 3}",
            "experiment_name": ["study-é", "study-β", "study-plain"][i % 3],
            "model": ["resnet18", "efficientnet_b0", "vit_base_patch16_224"][i % 3],
            "dataset": ["cifar10", "cifar100"][i % 2],
            "epochs": str([50, 75, 100][i % 3]),
            "batch_size": str([32, 64, 128][i % 3]),
            "duration": repr(1234.5678 + i),
            "emissions": f"{3.1e-3 * (i + 1):.6e}",
            "emissions_rate": "2.5e-06",
            "cpu_power": "42.5", "gpu_power": repr(379.123456789 + i), "ram_power": "20.0",
            "cpu_energy": repr(energy[0]), "gpu_energy": repr(energy[1]), "ram_energy": repr(energy[2]),
            "energy_consumed": repr(sum(energy)),
            "country_name": "Côte d'Ivoire" if i % 5 == 0 else "France",
            "country_iso_code": "CIV" if i % 5 == 0 else "FRA",
            "region": "" if i % 2 else "île-de-france",
            "cloud_provider": "", "cloud_region": "",
            "os": "Linux-5.15.0-x86_64-with-glibc2.35", "python_version": "3.10.12", "codecarbon_version": "2.3.4",
            "cpu_count": "32", "cpu_model": "AMD EPYC™ 7543 32-Core Processor",
            "gpu_count": "1", "gpu_model": "1 x NVIDIA A100-SXM4-80GB",
            "longitude": "" if i % 4 else "2.3522", "latitude": "" if i % 4 else "48.8566",
            "ram_total_size": "503.5", "tracking_mode": "machine", "on_cloud": "N", "pue": "1.0",
            "train_loss": repr(1.0 / (i + 2)), "eval_loss": "", "eval_top1": repr(90 + i / 7),
            "eval_top5": "99.87", "lr": ["0.0125", "0.025", "0.05"][i % 3],
        })
    return sorted(rows, key=lambda r: (r["timestamp"], r["run_id"]))


def write_rows(path: Path, rows: list[dict], header=schema.COLUMN_NAMES) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)
    return path


def typed(path: Path) -> list[dict]:
    """Every cell as its column's type (None when empty), to compare values rather than spellings."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: convert.coerce(v, schema.BY_NAME[k]) for k, v in row.items()} for row in csv.DictReader(f)]


def test_round_trip_gives_the_file_back_value_for_value(store, tmp_path):
    source = write_rows(tmp_path / "study.csv", study_rows(60))
    client = connect(store)
    assert ingest(client, read_csv(source)) == (60, 0)
    out = tmp_path / "out.csv"
    write_csv(collect_rows(client), out)
    assert out.read_text(encoding="utf-8").splitlines()[0] == ",".join(schema.COLUMN_NAMES)
    assert typed(out) == typed(source)


def test_ingesting_twice_adds_nothing(store, tmp_path, run_main):
    source = write_rows(tmp_path / "study.csv", study_rows(6))
    result = run_cli(["eemlflow.ingest", str(source)], tracking_uri=store)  # the command line, once
    assert result.returncode == 0 and "6 runs added" in result.stderr, result.stderr
    again = run_main(ingest_main, [str(source)], tracking_uri=store)
    assert again.returncode == 0 and "0 runs added, 6 already present" in again.stderr, again.stderr
    assert len(collect_rows(MlflowClient(store))) == 6


@pytest.mark.parametrize("mutate, message", [
    (lambda rows, header: (rows, [h for h in header if h != "gpu_energy"]),
     r":1: wrong header: missing columns gpu_energy"),
    (lambda rows, header: (rows, [*header, "colour"]), r":1: wrong header: unknown columns colour"),
    (lambda rows, header: ([*rows[:3], {**rows[3], "epochs": "fifty"}], header),
     r":5: column epochs: 'fifty' is not an integer"),
    (lambda rows, header: ([*rows[:2], {**rows[2], "gpu_energy": "1,5"}], header),
     r":4: column gpu_energy: '1,5' is not a number"),
    (lambda rows, header: ([*rows, rows[1]], header), r":6: column run_id: '.*' repeats line 3"),
    (lambda rows, header: ([*rows[:1], {**rows[1], "run_id": ""}], header), r":3: column run_id is empty"),
    ("ragged", r":4: 41 fields, the header has 42"),
])
def test_a_bad_file_imports_nothing_and_names_line_and_column(store, tmp_path, mutate, message, run_main):
    path = tmp_path / "bad.csv"
    if mutate == "ragged":  # a row that lost a field (a cell with an unquoted comma removed, say)
        write_rows(path, study_rows(4))
        lines = path.read_text(encoding="utf-8").splitlines()
        lines[3] = lines[3].rsplit(",", 1)[0]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        rows, header = mutate(study_rows(4), list(schema.COLUMN_NAMES))
        write_rows(path, [{k: r.get(k, "") for k in header} for r in rows], header)
    result = run_main(ingest_main, [str(path)], tracking_uri=store)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    if (tmp_path / "mlflow.db").exists():
        assert len(collect_rows(MlflowClient(store), statuses=("FINISHED", "RUNNING"))) == 0


def test_codecarbons_own_emissions_csv_is_accepted(store, tmp_path, run_main):
    from codecarbon import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(country_iso_code="FRA", output_dir=str(tmp_path), log_level="error",
                                      measure_power_secs=1)
    tracker.start()
    time.sleep(1.2)
    tracker.stop()
    result = run_main(ingest_main, [str(tmp_path / "emissions.csv")], tracking_uri=store)
    assert result.returncode == 0 and "CodeCarbon emissions.csv): 1 runs added" in result.stderr, result.stderr
    [row] = collect_rows(MlflowClient(store)).to_dict("records")
    assert row["experiment_name"] == "codecarbon-import" and row["country_iso_code"] == "FRA"
    assert row["energy_consumed"] > 0 and row["model"] is None and row["eval_top1"] is None


def test_export_of_trained_runs_skips_non_rows_and_filters_status(store, tmp_path, run_main):
    cfg = TrainConfig(model="test_resnet", dataset="digits", epochs=1, img_size=16, workers=0, batch_size=64, pue=1.5)
    outcome = train_run(cfg, tracking_uri=store, experiment_name="trained", system_metrics=False)
    client = MlflowClient(store)
    parent = client.create_run(client.get_experiment_by_name("trained").experiment_id)  # e.g. a sweep's parent
    client.set_terminated(parent.info.run_id)
    killed = tmp_path / "k.csv"
    write_rows(killed, study_rows(1))
    ingest(client, read_csv(killed), experiment="trained")
    killed_id = client.search_runs([parent.info.experiment_id], "tags.`eemlflow.row` = 'ingested'")[0].info.run_id
    client.set_terminated(killed_id, "KILLED")

    out = tmp_path / "Dataset" / "training_energy.csv"
    result = run_cli(["eemlflow.export", "--experiment", "trained", "--output", str(out)], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    assert "1 rows" in result.stderr and "total energy" in result.stderr
    [row] = typed(out)
    assert row["run_id"] == outcome.run_id and row["epochs"] == 1 and row["energy_consumed"] > 0
    assert row["pue"] == 1.5  # the setting, as CodeCarbon applied it to every energy column
    assert row["energy_consumed"] == pytest.approx(row["cpu_energy"] + row["gpu_energy"] + row["ram_energy"])

    extras = run_main(export_main, ["--experiment", "trained", "--status", "KILLED", "--with-extras", "--output", "-"],
                      tracking_uri=store)
    frame = pd.read_csv(io.StringIO(extras.stdout), keep_default_na=False)
    assert list(frame.columns[:42]) == list(schema.COLUMN_NAMES)
    assert sorted(frame["status"]) == ["FINISHED", "KILLED"]
    assert frame.loc[frame.status == "FINISHED", "mode"].item() == "faithful"

    missing = run_main(export_main, ["--experiment", "nope", "--output", str(out)], tracking_uri=store)
    assert missing.returncode == 2 and "no experiment named 'nope'" in missing.stderr


def _file_size_limit(limit: int):
    """For the child: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored, so it is an error, not a kill)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_failed_export_leaves_the_previous_csv_intact(store, tmp_path):
    client = connect(store)
    ingest(client, read_csv(write_rows(tmp_path / "s.csv", study_rows(40))))
    out = tmp_path / "training_energy.csv"
    write_csv(collect_rows(client), out)
    before = out.read_bytes()
    assert len(before) > 8192
    # A real write failure: the file-size limit stops the new CSV halfway (the disk-full case, for real).
    result = subprocess.run([sys.executable, "-m", "eemlflow.export", "--output", str(out)], cwd=tmp_path,
                            env=cli_env(store), capture_output=True, text=True, timeout=300,
                            preexec_fn=_file_size_limit(4096))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("eemlflow: error:")]
    assert "cannot write" in line and "File too large" in line
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_refuses_an_unknown_status_and_takes_several_experiments(store, tmp_path, run_main):
    rows = study_rows(6)  # experiments study-é, study-β, study-plain, two rows each
    ingest(connect(store), read_csv(write_rows(tmp_path / "s.csv", rows)))
    bad = run_main(export_main, ["--status", "DONE", "--output", "-"], tracking_uri=store)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown run status 'DONE'" in [ln for ln in bad.stderr.splitlines() if ln.startswith("eemlflow: error:")][0]
    two = run_main(export_main, ["--experiment", "study-é", "--experiment", "study-plain", "--output", "-"],
                   tracking_uri=store)
    assert two.returncode == 0, two.stderr
    frame = pd.read_csv(io.StringIO(two.stdout), keep_default_na=False)
    assert sorted(frame["experiment_name"]) == ["study-plain", "study-plain", "study-é", "study-é"]


def test_ingest_into_a_named_experiment(store, tmp_path, run_main):
    source = write_rows(tmp_path / "s.csv", study_rows(5))
    result = run_main(ingest_main, [str(source), "--experiment", "published"], tracking_uri=store)
    assert result.returncode == 0 and "5 runs added" in result.stderr, result.stderr
    frame = collect_rows(MlflowClient(store))
    assert set(frame["experiment_name"]) == {"published"} and len(frame) == 5


def test_a_spreadsheets_csv_with_a_byte_order_mark_is_accepted(store, tmp_path, run_main):
    plain = write_rows(tmp_path / "plain.csv", study_rows(3))
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # what "CSV UTF-8" in a spreadsheet saves
    result = run_main(ingest_main, [str(bom)], tracking_uri=store)
    assert result.returncode == 0 and "3 runs added" in result.stderr, result.stderr
    out = tmp_path / "out.csv"
    write_csv(collect_rows(MlflowClient(store)), out)
    assert typed(out) == typed(plain)


def test_export_and_ingest_through_a_live_mlflow_server(tmp_path, run_main):
    with MlflowServer(f"sqlite:///{tmp_path / 'srv.db'}", tmp_path / "server") as server:
        source = write_rows(tmp_path / "study.csv", study_rows(8))
        assert run_main(ingest_main, [str(source)], tracking_uri=server.uri).returncode == 0
        out = tmp_path / "out.csv"
        result = run_main(export_main, ["--output", str(out)], tracking_uri=server.uri)
        assert result.returncode == 0, result.stderr
        assert typed(out) == typed(source)


def test_export_warns_of_a_cell_exported_twice_naming_both_runs(store, tmp_path, run_main):
    rows = study_rows(7)  # rows 0 and 6: the same model, dataset, epochs, batch size and lr
    ingest(connect(store), read_csv(write_rows(tmp_path / "s.csv", rows)))
    result = run_main(export_main, ["--output", str(tmp_path / "out.csv")], tracking_uri=store)
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in " ".join(result.stderr.split()).split("eemlflow: warning: ")[1:]]
    assert len(warnings) == 1, result.stderr
    twins = sorted(r["run_id"] for r in rows if r["model"] == "resnet18" and r["dataset"] == "cifar10")
    assert len(twins) == 2 and "2 FINISHED runs share model=resnet18, dataset=cifar10, epochs=50" in warnings[0]
    assert all(run_id in warnings[0] for run_id in twins) and "export one experiment with --experiment" in warnings[0]
    assert len(typed(tmp_path / "out.csv")) == 7  # warned, not dropped: which to keep is the user's call


def test_the_exported_csv_has_the_permissions_any_new_file_gets(store, tmp_path, run_main):
    ingest(connect(store), read_csv(write_rows(tmp_path / "s.csv", study_rows(2))))
    out = tmp_path / "training_energy.csv"
    assert run_main(export_main, ["--output", str(out)], tracking_uri=store).returncode == 0
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the umask gives a new file here
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # readable by others as usual, not 0600


def test_verbose_shows_mlflows_info_lines_that_the_default_keeps_quiet(tmp_path):
    """A fresh store's schema creation is logged by MLflow at INFO: shown with --verbose only (the training's
    CodeCarbon lines follow the same switch, see tests/test_planning.py)."""
    quiet = run_cli(["eemlflow.export", "--output", "-"], tracking_uri=f"sqlite:///{tmp_path / 'quiet.db'}")
    loud = run_cli(["eemlflow.export", "--verbose", "--output", "-"], tracking_uri=f"sqlite:///{tmp_path / 'loud.db'}")
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "Creating initial MLflow database tables" in loud.stderr and " INFO " in loud.stderr, loud.stderr
    assert "Creating initial MLflow database tables" not in quiet.stderr and " INFO " not in quiet.stderr, quiet.stderr
