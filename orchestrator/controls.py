"""The operator's controls: pins (a model's minimum level on a host) and priority classes.

Two sources, merged:
- the settings (`ORCH_PINS`, `ORCH_PRIORITIES`): in force at every start; a pin set there is
  removed only by changing the settings;
- the REST API (`PUT`/`DELETE /v1/pins/{host}/{model}`, `PUT`/`DELETE
  /v1/priorities/{model}`, operator token), kept in the registry so they survive a restart.
A model pinned by both is pinned at the higher level; a priority set over REST replaces the
setting's.

Where they act: the planner puts them in the decision problem (`Instance.pins`, the weights
of `placement.PRIORITY_WEIGHTS`; the decision holds every pin that fits its host and says
which it cannot), every heartbeat's acknowledgement tells each agent its pins and all
priorities (the agent refuses a level below a pin and serves a higher class first in its
swap pool), and `GET /v1/placement` shows both per model.
"""

from __future__ import annotations

import logging
import threading

from genedge.contract import Controls, Pin, Priority, TargetLevel, merge_pins
from orchestrator.adapters.registry import Registry
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator.controls")

STATE_KEY = "controls"


class ControlsStore:
    """The controls in force; thread-safe (the planner reads them off the event loop)."""

    def __init__(self, settings: OrchestratorSettings, registry: Registry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._settings_pins: dict[tuple[str, str], TargetLevel] = {
            (host, model): level
            for host, models in settings.pins.items()
            for model, level in models.items()
        }
        self._settings_priorities = dict(settings.priorities)
        self._pins: dict[tuple[str, str], TargetLevel] = {}
        self._priorities: dict[str, Priority] = {}
        self._load()

    def _load(self) -> None:
        doc = self._registry.load_state(STATE_KEY) or {}
        try:
            saved = Controls.model_validate(doc)
        except ValueError as exc:  # a document this contract cannot read: start without
            log.warning("stored operator controls unreadable (%s); starting without them", exc)
            return
        self._pins = {(p.host, p.model): p.level for p in saved.pins}
        self._priorities = dict(saved.priorities)

    def _save(self) -> None:
        doc = Controls(
            pins=[
                Pin(host=h, model=m, level=level, source="operator")
                for (h, m), level in sorted(self._pins.items())
            ],
            priorities=dict(sorted(self._priorities.items())),
        )
        self._registry.save_state(STATE_KEY, doc.model_dump(mode="json"))

    # ------------------------------------------------------------------ reads
    def pins(self) -> dict[tuple[str, str], TargetLevel]:
        """(host, model) -> minimum level, both sources merged (the higher level wins)."""
        with self._lock:
            return merge_pins(self._settings_pins, self._pins)

    def pins_of_host(self, host: str) -> dict[str, TargetLevel]:
        return {m: level for (h, m), level in self.pins().items() if h == host}

    def priorities(self) -> dict[str, Priority]:
        """Model -> class, for every model not `normal`."""
        with self._lock:
            merged = {**self._settings_priorities, **self._priorities}
        return {m: p for m, p in merged.items() if p != Priority.NORMAL}

    def view(self) -> Controls:
        with self._lock:
            pins = [
                Pin(host=h, model=m, level=level, source="settings")
                for (h, m), level in sorted(self._settings_pins.items())
            ] + [
                Pin(host=h, model=m, level=level, source="operator")
                for (h, m), level in sorted(self._pins.items())
            ]
        return Controls(pins=pins, priorities=dict(sorted(self.priorities().items())))

    def set_by_settings(self, host: str, model: str) -> bool:
        return (host, model) in self._settings_pins

    # ------------------------------------------------------------------ writes
    def set_pin(self, host: str, model: str, level: TargetLevel) -> None:
        with self._lock:
            self._pins[(host, model)] = level
            self._save()
        log.info("pin: %s on %s at least %s", model, host, level)

    def remove_pin(self, host: str, model: str) -> bool:
        """False when no operator pin was there."""
        with self._lock:
            removed = self._pins.pop((host, model), None) is not None
            if removed:
                self._save()
        if removed:
            log.info("pin removed: %s on %s", model, host)
        return removed

    def set_priority(self, model: str, priority: Priority) -> None:
        with self._lock:
            self._priorities[model] = priority
            self._save()
        log.info("priority: %s is %s", model, priority.value)

    def reset_priority(self, model: str) -> bool:
        """Drop the REST priority of a model (the setting's, if any, applies again); False
        when there was none."""
        with self._lock:
            removed = self._priorities.pop(model, None) is not None
            if removed:
                self._save()
        return removed
