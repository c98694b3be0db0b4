"""Where a resumed run starts: its checkpoint, checked against the run and the settings, and the energy lost.

A run may be resumed when it is not FINISHED and no process trains it any more (KILLED, FAILED, or RUNNING but
stale: see ``eemlflow.store.liveness``), its checkpoint is on this machine, and nothing that changes the result
differs. Everything is checked before the run is reopened, so a refusal changes nothing.

Energy: a checkpoint keeps CodeCarbon's records of the run's segments up to the moment it was written. What the
killed process measured after that (its last heartbeat, or the total it logged when it was stopped cleanly)
trained nothing that survives: it is counted as ``lost_energy_kwh`` on the run, not added to its energy columns.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.store import schema
from eemlflow.store.liveness import Heartbeat, staleness
from eemlflow.store.status import FINISHED, RUNNING
from eemlflow.training import TrainConfig
from eemlflow.training.checkpoint import Checkpoint, device_change, differing_settings, load_checkpoint
from eemlflow.training.config import RESULT, checkpoint_path


@dataclass(frozen=True)
class ResumePoint:
    """A checked checkpoint, the segment this process will be, and the energy lost so far in kWh."""

    checkpoint: Checkpoint
    segment: int
    lost_energy_kwh: float

    @property
    def earlier_segments(self) -> list[dict]:
        return list(self.checkpoint.extra.get("segments") or [])


def resume_config(client: MlflowClient, given: Mapping[str, str | None]) -> TrainConfig:
    """The settings to resume the run ``given["resume"]`` with: those recorded on the run, with the ones given
    (as raw strings; None or empty: not given) over them. A result-changing setting given with another value than
    the run's is refused in one line naming it; execution settings (workers, data_dir, ...) and budgets may
    change."""
    run_id = (given.get("resume") or "").strip()
    try:
        params = client.get_run(run_id).data.params
    except MlflowException:
        raise EemlflowError(f"no run {run_id} in the tracking store at {client.tracking_uri}: check the run id "
                            "(MLflow UI, or python -m eemlflow.runs stale)") from None
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    # A run that records no settings (not trained by eemlflow) is resumed with the given ones: its checkpoint, if
    # any, is then checked against them like any other.
    recorded = {k: v for k, v in params.items() if k in fields and k != "resume"}
    told = {k: v for k, v in given.items() if v is not None and str(v).strip() != ""}
    if not recorded:
        return TrainConfig.from_strings(told)
    before = TrainConfig.from_strings(recorded)
    after = TrainConfig.from_strings({**recorded, **told})
    changed = [f"{k} {getattr(after, k)!r} (the run's is {getattr(before, k)!r})" for k in told
               if fields[k].metadata["kind"] == RESULT and getattr(after, k) != getattr(before, k)]
    if changed:
        raise EemlflowError(f"cannot resume run {run_id} with {', '.join(changed)}: a resumed run keeps the settings "
                            "it was trained with; leave them out, or start a new run")
    return after


def prepare_resume(client: MlflowClient, cfg: TrainConfig, device_type: str) -> ResumePoint:
    """Check that ``cfg.resume`` can be resumed here, on a ``device_type`` device, with ``cfg``; one clear error
    otherwise."""
    run_id = cfg.resume
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise EemlflowError(f"no run {run_id} in the tracking store at {client.tracking_uri}: check the run id "
                            "(MLflow UI, or python -m eemlflow.runs stale)") from None
    status = run.info.status
    if status == FINISHED:
        raise EemlflowError(f"run {run_id} is FINISHED: there is nothing to resume")
    if status == RUNNING and staleness(run, now=time.time()) is None:
        beat = Heartbeat.from_tag(run.data.tags.get(schema.HEARTBEAT_TAG))
        where = f" (process {beat.pid} on {beat.host})" if beat else ""
        raise EemlflowError(f"run {run_id} is still being trained{where}: stop it first, or wait for it")
    checkpoint = load_checkpoint(checkpoint_path(cfg.checkpoint_dir, run_id))
    differing = differing_settings(checkpoint, cfg)
    if differing:
        raise EemlflowError(f"cannot resume run {run_id} with other settings than it was trained with: "
                            f"{'; '.join(differing)}; resume with the same values, or start a new run")
    moved = device_change(checkpoint, device_type)
    if moved:
        raise EemlflowError(f"cannot resume run {run_id} here: {moved}")
    if checkpoint.epochs_done >= cfg.epochs:
        raise EemlflowError(f"run {run_id} has all its {cfg.epochs} epochs in its checkpoint: nothing to train")
    segments = int(run.data.tags.get(schema.SEGMENTS_TAG) or 1)
    lost = run.data.metrics.get(schema.LOST_ENERGY_METRIC, 0.0) + _lost_since_checkpoint(run, checkpoint)
    return ResumePoint(checkpoint, segments + 1, lost)


def _lost_since_checkpoint(run, checkpoint: Checkpoint) -> float:
    """Energy the stopped process measured after its last checkpoint, in kWh (0 when nothing says more)."""
    segments = checkpoint.extra.get("segments") or []
    at_checkpoint = sum(float(s.get("energy_consumed") or 0.0) for s in segments)
    known = [at_checkpoint]
    logged = run.data.metrics.get(schema.ENERGY_METRIC)
    if logged is not None and run.info.status != RUNNING:  # stopped cleanly: it logged its whole total
        known.append(logged)
    beat = Heartbeat.from_tag(run.data.tags.get(schema.HEARTBEAT_TAG))
    if beat is not None and beat.energy_kwh is not None and segments:
        earlier = sum(float(s.get("energy_consumed") or 0.0) for s in segments[:-1])
        known.append(earlier + beat.energy_kwh)
    return max(known) - at_checkpoint

