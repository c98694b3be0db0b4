"""Run by the real torchrun on the simulated GPU host (see simgpu_host.py), one rank per GPU: each rank's
EnergyMonitor measures its own GPU (``LOCAL_RANK``), the node's CPU and RAM only on rank 0, through a RankMeter over
an epoch window of ``argv[1]`` seconds; rank 0 prints what the run measured as JSON."""

import json
import sys
import time
from datetime import timedelta

import torch.distributed as dist

from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.ranks import RankMeter
from eemlflow.training.distributed import side_store
from eemlflow.training.ranks import Ranks

seconds = float(sys.argv[1])
ranks = Ranks.from_environment()
dist.init_process_group("gloo")
monitor = EnergyMonitor("USA", gpu_ids=[ranks.local_rank], measure_power_secs=1, measure_host=ranks.host_leader)
meter = RankMeter(monitor, side_store(timedelta(seconds=60)), ranks.rank, ranks.world_size, ranks.host_leader)
meter.start()
meter.begin_window("epoch")
time.sleep(seconds)
epoch = meter.end_window("epoch")
dist.destroy_process_group()
result = meter.stop(warn=False)
if ranks.leader:
    print(json.dumps({
        "gpu_count": result.record.gpu_count, "gpu_model": result.record.gpu_model,
        "duration_s": result.record.duration, "gpu_energy_kwh": result.record.gpu_energy,
        "cpu_energy_kwh": result.record.cpu_energy, "ram_energy_kwh": result.record.ram_energy,
        "energy_kwh": result.record.energy_consumed, "gpu_ids": result.provenance.gpu_ids,
        "counters": dict(result.counters), "epoch_gpu_energy_kwh": epoch.gpu_energy_kwh,
        "epoch_counters": dict(epoch.counters), "suspicions": list(result.suspicions),
        "ranks": [vars(r) for r in meter.ranks],
    }))
