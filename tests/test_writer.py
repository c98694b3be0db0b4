"""The store writer's rules in-process, on a real sqlite store and a real refused connection: which errors are
retried, that the others are not, and what a replay that stops half-way keeps. (The outage of a real server in the
middle of a training is in tests/test_store.py.)"""

from __future__ import annotations

import json
import time

import pytest
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode
from mlflow.tracking import MlflowClient
from services import free_port

from eemlflow.errors import EemlflowError
from eemlflow.store.writer import StoreWriter, is_transient, read_spool, replay, with_retries


@pytest.fixture
def away() -> MlflowClient:
    """A client of a tracking server that is not there: every call is refused at once."""
    return MlflowClient(f"http://127.0.0.1:{free_port()}")


def error_of(call) -> Exception:
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("the call did not fail")


def test_which_errors_are_worth_retrying(store, away):
    client = MlflowClient(store)
    refused = error_of(lambda: with_retries(lambda: away.get_experiment("0"), "probe", window_s=0))
    assert is_transient(refused), refused  # the server away (connection refused)
    missing_run = error_of(lambda: client.log_param("0" * 32, "lr", "0.1"))
    assert not is_transient(missing_run), missing_run  # the store answered: no such run
    run = client.create_run("0")
    client.log_param(run.info.run_id, "lr", "0.1")
    changed = error_of(lambda: client.log_param(run.info.run_id, "lr", "0.2"))
    assert not is_transient(changed), changed  # a param may not change: retrying cannot help
    for code, transient in (("TEMPORARILY_UNAVAILABLE", True), ("REQUEST_LIMIT_EXCEEDED", True),
                            ("PERMISSION_DENIED", False), ("INVALID_PARAMETER_VALUE", False)):
        said = MlflowException("the store said no", error_code=ErrorCode.Value(code))  # as the REST client makes it
        assert said.error_code == code and is_transient(said) == transient, code
    bare_502 = MlflowException("API request to http://h/api failed with error code 502 != 200. Response body: "
                               "'<html>Bad Gateway</html>'")
    assert is_transient(bare_502)  # a proxy in front of a restarting server
    assert not is_transient(MlflowException("API request to http://h/api failed with error code 500 != 200. "
                                            "Response body: '{\"error_code\": \"INTERNAL_ERROR\"}'"))  # its own error
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(ValueError("bad value")) and not is_transient(PermissionError("read-only"))


def test_a_transient_error_is_retried_with_backoff_until_the_window_closes_and_others_are_not(store, away):
    calls, sleeps = [], []
    def wait(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)
    def refused_call():
        calls.append(time.monotonic())
        return away.get_experiment("0")
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        with_retries(refused_call, "probe", window_s=3.0, sleep=wait)
    assert is_transient(raised.value) and len(calls) >= 3 and time.monotonic() - started >= 3.0
    assert sleeps[:2] == [0.5, 1.0] and max(sleeps) <= 2.0, sleeps  # backoff doubling, cut at the window's end

    calls.clear()
    client = MlflowClient(store)
    def missing_run():
        calls.append(1)
        client.log_param("0" * 32, "lr", "0.1")
    with pytest.raises(MlflowException):
        with_retries(missing_run, "log_param", window_s=60, sleep=wait)
    assert calls == [1]  # asked once: the answer will not change


def test_records_kept_while_the_store_is_away_and_a_replay_cut_short_keeps_the_rest(store, away, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("EEMLFLOW_STORE_RETRY_SECONDS", "0")
    client = MlflowClient(store)
    run_id = client.create_run("0").info.run_id
    client.log_param(run_id, "lr", "0.1")
    writer = StoreWriter(away, run_id, tmp_path / "spool.jsonl")
    writer.log_batch([Metric("loss", 1.0, 1, 1)], [], [])
    writer.log_batch([], [Param("lr", "0.2")], [])  # the store will refuse this one: lr is 0.1 already
    writer.log_batch([Metric("loss", 0.5, 2, 2)], [], [])
    writer.set_terminated("FINISHED")
    assert writer.spooled == 4
    header, records = read_spool(tmp_path / "spool.jsonl")
    assert header["run_id"] == run_id and [r["op"] for r in records] == ["log_batch"] * 3 + ["set_terminated"]

    with pytest.raises(EemlflowError, match=f"1 of 4 records replayed into run {run_id}, 3 kept"):
        replay(tmp_path / "spool.jsonl", client)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0]  # sent once, in order
    _, kept = read_spool(tmp_path / "spool.jsonl")
    assert kept == records[1:]  # what was sent is out of the file; the rest kept, in order
    # Put right by hand (the refused record taken out), the replay sends the rest, once, and removes the file.
    lines = (tmp_path / "spool.jsonl").read_text().splitlines()
    (tmp_path / "spool.jsonl").write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert replay(tmp_path / "spool.jsonl", client) == 0 and not (tmp_path / "spool.jsonl").exists()
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert json.loads(lines[0])["tracking_uri"] == away.tracking_uri  # where the records were meant to go
