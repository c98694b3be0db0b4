"""How a run ends, whatever stops it: its energy so far logged, then its status, with signals held off meanwhile
(``close_run``); SIGTERM turned into ``Terminated`` while it trains (``sigterm_raises``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.idle import IdlePower, dynamic_energy_kwh
from eemlflow.measure.ranks import RankMeter
from eemlflow.runner.outcome import RunOutcome, Terminated
from eemlflow.store.run import TrainingRun
from eemlflow.store.status import FINISHED


def close_run(run: TrainingRun, monitor: EnergyMonitor | RankMeter | None, outcome: RunOutcome,
           earlier_segments: Sequence[dict] = (), log_model: Callable[[], None] | None = None,
           idle: IdlePower | None = None) -> None:
    """Log the energy measured so far (all segments) and end the run; signals are held off until this is done.
    A finished run's model (``log_model``) is logged after the energy is measured: it is not training."""
    with signals_ignored():
        if monitor is not None:
            outcome.energy = monitor.stop(earlier_segments)
            run.log_energy(outcome.energy)
            if isinstance(monitor, RankMeter) and monitor.ranks:
                run.log_ranks(monitor.ranks)
            if idle is not None:
                run.log_idle(idle, dynamic_energy_kwh(outcome.energy, idle), outcome.energy.cpu_ram_share)
            if outcome.status == FINISHED and outcome.energy.reading is not None:
                run.log_projection_errors(outcome.energy.reading.energy_kwh, outcome.projections,
                                          resumed=bool(earlier_segments))
        if outcome.status == FINISHED and log_model is not None:
            log_model()
        run.finish(outcome.status, outcome.error, outcome.stopped)
        outcome.unlogged, outcome.spool_path = run.writer.spooled, str(run.writer.spool_path)


@contextmanager
def handled(handler: Callable[[int, object], None] | int, signals: Sequence[int]) -> Iterator[None]:
    """``handler`` for ``signals`` within the block, the previous handlers back after it; nothing changed off the
    main thread (an in-process training on a thread of its own), where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` within the block, so that the run closes KILLED as on Ctrl-C."""
    with handled(_raise_terminated, (signal.SIGTERM,)):
        yield


@contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C while the run is being closed would leave it RUNNING: ignore signals until done."""
    with handled(signal.SIG_IGN, (signal.SIGINT, signal.SIGTERM)):
        yield
