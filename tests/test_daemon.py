"""The daemon plumbing every daemon shares: config layering, signals, staged shutdown, the thread runner."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agilenn.daemon import (
    Daemon,
    DaemonConfig,
    DaemonThread,
    JsonFormatter,
    captured_signals,
    configure_logging,
)


@dataclass(frozen=True)
class ToyConfig(DaemonConfig):
    name: str = "toy"
    workers: int = 2
    ratio: float = 0.5


def test_layers_apply_file_then_environment_then_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "toy.toml"
    config_file.write_text('name = "from-file"\nworkers = 3\nratio = 0.25\n')
    env = {"AGILENN_WORKERS": "5", "AGILENN_LOG_FORMAT": "text", "UNRELATED": "x"}
    config = ToyConfig.load(config_file, env=env, ratio=0.75, name=None)
    assert (config.name, config.workers, config.ratio, config.log_format) == ("from-file", 5, 0.75, "text")
    assert ToyConfig.load(env={}) == ToyConfig()


@pytest.mark.parametrize("make, message", [
    (lambda: ToyConfig.load(env={}, wokers=3), "unknown ToyConfig settings: wokers"),
    (lambda: ToyConfig.load(env={"AGILENN_WORKERS": "many"}), "AGILENN_WORKERS='many' is not a int"),
    (lambda: ToyConfig(workers="2"), "workers must be a int"),  # type: ignore[arg-type]
    (lambda: ToyConfig(log_format="xml"), "log_format must be one of json, text"),
    (lambda: ToyConfig(shutdown_timeout_s=-1), "shutdown_timeout_s cannot be negative"),
    (lambda: ToyConfig(ratio=float("nan")), "ratio must be a finite number"),
    (lambda: ToyConfig.load(env={"AGILENN_SHUTDOWN_TIMEOUT_S": "inf"}),
     "shutdown_timeout_s must be a finite"),
])
def test_bad_settings_are_refused_with_the_setting_named(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_an_int_is_accepted_where_a_float_is_expected() -> None:
    assert ToyConfig(ratio=1).ratio == 1


def test_json_logs_are_one_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        logging.getLogger("agilenn.toy").info("served %d", 3)
    finally:
        logging.getLogger("agilenn").handlers.clear()
    entry = json.loads(capsys.readouterr().err.strip())
    assert entry["message"] == "served 3" and entry["level"] == "INFO" and entry["logger"] == "agilenn.toy"
    with pytest.raises(ValueError):
        configure_logging("LOUD", "json")
    logging.getLogger("agilenn").handlers.clear()
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_a_first_signal_asks_for_a_stop_a_second_forces_it_and_neither_raises() -> None:
    should_exit, force_exit = threading.Event(), threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    # Python's own SIGINT handler, whatever launched the tests (a background job ignores SIGINT).
    launched_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _signal_twice(should_exit, force_exit)
    finally:
        signal.signal(signal.SIGINT, launched_with)
    assert signal.getsignal(signal.SIGTERM) is before  # the original handler is back


def _signal_twice(should_exit: threading.Event, force_exit: threading.Event) -> None:
    with captured_signals(should_exit, force_exit):
        os.kill(os.getpid(), signal.SIGTERM)
        assert should_exit.wait(2) and not force_exit.is_set()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        os.kill(os.getpid(), signal.SIGINT)
        assert force_exit.wait(2)
        # A third signal gets Python's own handling, for a daemon blocked for good.
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


class Recorder(Daemon):
    """Records the order of the hooks; ``in_flight`` units of work are left when it is asked to stop."""

    def __init__(self, config: DaemonConfig, in_flight: int = 0, fail_load: bool = False) -> None:
        super().__init__(config)
        self.calls: list[str] = []
        self.in_flight = in_flight
        self.fail_load = fail_load

    def load(self) -> None:
        self.calls.append("load")
        if self.fail_load:
            raise OSError("port busy")
        super().load()

    def serve_step(self) -> None:
        self.calls.append("serve")
        self.should_exit.set()

    def drain_step(self) -> bool:
        self.calls.append("drain")
        self.in_flight -= 1
        if self.in_flight == 1:
            self.force_exit.set()  # a second signal while draining
        return self.in_flight > 0

    def cancel_remaining(self) -> None:
        self.calls.append(f"cancel {self.in_flight}")

    def close(self) -> None:
        self.calls.append("close")
        super().close()


def test_shutdown_runs_in_stages_and_a_second_signal_skips_to_cancel_then_close() -> None:
    daemon = Recorder(DaemonConfig(shutdown_timeout_s=60), in_flight=3)
    assert daemon.run() == 0
    assert daemon.calls == ["load", "serve", "drain", "drain", "cancel 1", "close"]


def test_the_shutdown_timeout_bounds_the_drain() -> None:
    daemon = Recorder(DaemonConfig(shutdown_timeout_s=0), in_flight=5)
    daemon.run()
    assert daemon.calls == ["load", "serve", "cancel 5", "close"]


def test_a_failed_load_closes_what_it_opened_and_the_thread_runner_reraises() -> None:
    daemon = Recorder(DaemonConfig(), fail_load=True)
    with pytest.raises(OSError, match="port busy"):
        DaemonThread(daemon).start()
    assert daemon.calls == ["load", "close"] and daemon.started.is_set()


def test_the_thread_runner_reraises_a_crash_on_stop() -> None:
    class Crashing(Recorder):
        def serve_step(self) -> None:
            raise RuntimeError("bug in serving")

    runner = DaemonThread(Crashing(DaemonConfig()))
    runner.start()
    with pytest.raises(RuntimeError, match="bug in serving"):
        runner.stop()
    assert runner.daemon.calls[-1] == "close"  # type: ignore[attr-defined]


def test_sighup_asks_for_a_reload_and_the_handler_is_put_back() -> None:
    should_exit, force_exit, reload = threading.Event(), threading.Event(), threading.Event()
    before = signal.getsignal(signal.SIGHUP)
    with captured_signals(should_exit, force_exit, reload):
        os.kill(os.getpid(), signal.SIGHUP)
        assert reload.wait(2) and not should_exit.is_set()
    assert signal.getsignal(signal.SIGHUP) is before
