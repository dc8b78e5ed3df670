"""Test-only fault injection, read from ``FORWARDPASS_TEST_FAULT`` and honoured only when that variable is set.

Values (one at a time):

* ``crash_after_steps:N`` - the engine thread raises after N steps (docs/reliability.md, engine death);
* ``stall_after_steps:N`` - the engine thread hangs after N steps while work is pending (stall detector);
* ``slow_load:S`` - model loading takes S more seconds (loading);
* ``slow_steps:S`` - every engine step takes S more seconds, so that tests can watch a prefill or a queue
  at work on a tiny model (leaving during prefill, abort storm, slots, queue timeout).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ENV_VAR = "FORWARDPASS_TEST_FAULT"


class InjectedFault(RuntimeError):
    """The error a ``crash_after_steps`` fault raises in the engine thread."""


@dataclass(frozen=True)
class Fault:
    kind: str
    value: float


def from_env() -> Fault | None:
    """The fault named by the environment, or None. A malformed value is an error, not silently ignored."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return None
    kind, _, value = spec.partition(":")
    if kind not in ("crash_after_steps", "stall_after_steps", "slow_load", "slow_steps"):
        raise ValueError(f"{ENV_VAR}={spec!r}: unknown fault {kind!r}")
    fault = Fault(kind, float(value or 0))
    logger.warning("test fault injection enabled: %s=%r", ENV_VAR, spec)
    return fault


def step_hook(fault: Fault) -> Callable[[], None] | None:
    """The AsyncEngine.step_hook that injects ``fault``, or None if it is not an engine fault."""
    if fault.kind == "slow_steps":
        return lambda: time.sleep(fault.value)
    if fault.kind not in ("crash_after_steps", "stall_after_steps"):
        return None
    steps = 0
    forever = threading.Event()

    def hook() -> None:
        nonlocal steps
        steps += 1
        if steps <= fault.value:
            return
        if fault.kind == "crash_after_steps":
            raise InjectedFault(f"injected engine fault after {int(fault.value)} steps")
        logger.warning("injected engine stall after %d steps", int(fault.value))
        forever.wait()

    return hook


def delay_load(fault: Fault | None) -> None:
    if fault is not None and fault.kind == "slow_load":
        time.sleep(fault.value)
