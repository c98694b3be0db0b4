"""One machine-wide CodeCarbon tracker (the real one, machine mode, no GPU), the reference that concurrent
trainings' CPU+RAM energy is held against: it writes ``argv[1]``.ready once measuring, then samples its cumulative
CPU and RAM energy every 0.25 s until ``argv[1]`` exists, and writes the (unix time, CPU kWh, RAM kWh) samples to
``argv[2]``."""

import json
import os
import sys
import time

from codecarbon import OfflineEmissionsTracker
from codecarbon.output_methods.base_output import BaseOutput


class Latest(BaseOutput):
    def __init__(self) -> None:
        self.total = None

    def out(self, total, delta) -> None:
        self.total = total

    def live_out(self, total, delta) -> None:
        pass


latest = Latest()
tracker = OfflineEmissionsTracker(country_iso_code="USA", measure_power_secs=1, output_methods=[],
                                  output_handlers=[latest], gpu_ids=[], log_level="error")
tracker.start()
stop, out = sys.argv[1], sys.argv[2]
open(stop + ".ready", "w").close()
samples = []
while not os.path.exists(stop):
    tracker.flush()
    samples.append((time.time(), latest.total.cpu_energy, latest.total.ram_energy))
    time.sleep(0.25)
tracker.stop()
with open(out, "w") as f:
    json.dump(samples, f)
