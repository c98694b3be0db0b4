"""How good the sweep's forecast is: forecast a grid, run it, print predicted vs measured per cell and in total.

    python benchmarks/forecast_check.py [GRID] [--only key=value] [--tracking-uri URI]

Runs ``python -m eemlflow.sweep GRID --forecast run`` (one cell at a time, so cells do not share the machine)
into a fresh sqlite store in a temporary folder unless ``--tracking-uri`` is given, then reads the children back:
their forecast (``forecast_*``) and what CodeCarbon measured (``duration``, ``energy_consumed``). The default grid
is the tests' 2x2 tiny grid on digits (CPU targets: +-25 % a cell, +-15 % in total; +-10 % is the GPU goal).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eemlflow.store import connect, search_all_runs  # noqa: E402
from eemlflow.store.schema import CELL_TAG, ENERGY_METRIC, FORECAST  # noqa: E402
from eemlflow.sweep.grid import load_grid, parse_pairs  # noqa: E402

TINY = """name: forecast-check
experiment: forecast-check
settings: {dataset: digits, epochs: 2, img_size: 32, workers: 0}
grid:
  - {model: [test_resnet, test_efficientnet], batch_size: [32, 64]}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", nargs="?", help="grid file (default: the tiny digits grid)")
    p.add_argument("--only", action="append", default=[], help="passed to the sweep")
    p.add_argument("--tracking-uri", default=None, help="default: a fresh sqlite file in a temporary folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="eemlflow-forecast-check-") as folder:
        grid = args.grid or str(Path(folder) / "tiny.yaml")
        if not args.grid:
            Path(grid).write_text(TINY)
        uri = args.tracking_uri or f"sqlite:///{Path(folder) / 'mlflow.db'}"
        only = [a for o in args.only for a in ("--only", o)]
        sweep = subprocess.run([sys.executable, "-m", "eemlflow.sweep", grid, "--forecast", "run", *only],
                               env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=folder)
        if sweep.returncode != 0:
            print(f"the sweep failed (exit {sweep.returncode})", file=sys.stderr)
            return 1
        spec = load_grid(grid, only=parse_pairs(args.only, "--only"))
        client = connect(uri)
        experiment = client.get_experiment_by_name(spec.experiment)
        children = {r.data.tags[CELL_TAG]: r for r in search_all_runs(client, [experiment.experiment_id],
                                                                       "attributes.status = 'FINISHED'")
                    if CELL_TAG in r.data.tags and FORECAST.energy_kwh in r.data.metrics}
        print(f"{'cell':40} {'forecast s':>11} {'measured s':>11} {'err %':>7} "
              f"{'forecast Wh':>12} {'measured Wh':>12} {'err %':>7}")
        totals = [0.0, 0.0, 0.0, 0.0]
        worst = 0.0
        for cell in spec.cells:
            run = children.get(cell.cell_id)
            if run is None:
                continue
            m = run.data.metrics
            figures = (m[FORECAST.duration_s], m["duration"], m[FORECAST.energy_kwh], m[ENERGY_METRIC])
            totals = [t + f for t, f in zip(totals, figures)]
            t_err, e_err = (figures[0] / figures[1] - 1) * 100, (figures[2] / figures[3] - 1) * 100
            worst = max(worst, abs(e_err))
            print(f"{cell.config.run_name:40} {figures[0]:11.2f} {figures[1]:11.2f} {t_err:+7.1f} "
                  f"{figures[2] * 1e3:12.4f} {figures[3] * 1e3:12.4f} {e_err:+7.1f}")
        if not totals[3]:
            print("no finished cell with a forecast", file=sys.stderr)
            return 1
        print(f"{'total':40} {totals[0]:11.2f} {totals[1]:11.2f} {(totals[0] / totals[1] - 1) * 100:+7.1f} "
              f"{totals[2] * 1e3:12.4f} {totals[3] * 1e3:12.4f} {(totals[2] / totals[3] - 1) * 100:+7.1f}")
        print(f"worst cell energy error {worst:.1f} %; total energy error {(totals[2] / totals[3] - 1) * 100:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
