"""Where a target's spend is kept: one ledger per target, read as input.

    {target}/.nbp/budget.json          the ledger: spend by run id, total, and the holds not
                                       yet settled by intent id (changed under its lease)
    {target}/.nbp/spend/{holder}.json  one per process running without a cap: what it has
                                       settled and still holds, flushed now and then

A capped run changes the ledger for every create (it must: the cap is checked atomically)
and counts the spend files of the others beside it, so capped and uncapped runs on one
target see each other. An uncapped run writes only its own spend file (no lease per create),
and folds it into the ledger when it ends; a spend file whose process died is folded by the
next run that starts. Both files are input: a file that does not parse or has the wrong
shape is `LedgerInvalid`, one clear error before anything is paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nbp.flows.engine.lease import Heartbeat, Lease
from nbp.flows.engine.policy import RunConfigurationError
from nbp.outputs.layout import LEDGER, LEDGER_LOCK, SPEND_DIR
from nbp.outputs.sink import Sink

LEDGER_VERSION = 2
MAX_ENTRIES = 1_000_000      # open holds or runs a ledger may list: more is not a ledger
REPAIR = ("restore it from a backup, or delete it to count the target's spend from zero "
          "(the journal and the manifest keep every cell's cost either way)")


class LedgerInvalid(RunConfigurationError):
    """The target's ledger or a spend file does not parse or has the wrong shape."""


@dataclass
class SpendRecord:
    """One uncapped process's spend on the target (`{SPEND_DIR}/{holder}.json`)."""

    holder: str
    run_id: str
    settled_usd: float = 0.0
    open: dict[str, float] = field(default_factory=dict)  # intent -> price still held

    @property
    def total_usd(self) -> float:
        return self.settled_usd + sum(self.open.values())

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "holder": self.holder, "run_id": self.run_id,
                "settled_usd": self.settled_usd, "open": dict(self.open)}


@dataclass
class Ledger:
    """The target's spend (module docstring); shared by every process through a lease, and
    by the coroutines of one process through a lock (the lease names a process: two of its
    coroutines would both hold it and lose an update)."""

    sink: Sink
    heartbeat: Heartbeat
    _ours: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def read(self) -> dict[str, Any]:
        """The ledger, validated (`LedgerInvalid`); an empty one when there is none."""
        try:
            raw = self.sink.read_bytes(LEDGER)
            data = None if raw is None else json.loads(raw)
        except ValueError as exc:
            raise self._invalid(LEDGER, f"it is not JSON ({exc})") from None
        if data is None:
            return {"version": LEDGER_VERSION, "total_usd": 0.0, "runs": {}, "open": {}}
        return self._checked(data)

    def write(self, data: dict[str, Any]) -> None:
        self.sink.put_json(LEDGER, data)

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[None]:
        """Exclusive use of the ledger: this process's lock, then the target's lease."""
        async with self._ours, Lease(self.sink, LEDGER_LOCK, self.heartbeat):
            yield

    # -- spend files ----------------------------------------------------------------------

    def spend_records(self) -> dict[str, SpendRecord]:
        """Every process's spend file, validated, by holder."""
        found: dict[str, SpendRecord] = {}
        names = self.sink.json_names(SPEND_DIR)
        raw = self.sink.read_bytes_many(f"{SPEND_DIR}/{name}.json" for name in names)
        for rel, data in raw.items():
            record = self._spend_record(rel, data)
            found[record.holder] = record
        return found

    def write_spend(self, record: SpendRecord) -> None:
        self.sink.put_json(f"{SPEND_DIR}/{record.holder}.json", record.to_json())

    def drop_spend(self, holder: str) -> None:
        self.sink.delete(f"{SPEND_DIR}/{holder}.json")

    def others_spend(self, holder: str) -> float:
        """What the other uncapped processes on the target have spent or hold."""
        return sum(r.total_usd for h, r in self.spend_records().items() if h != holder)

    @staticmethod
    def fold(data: dict[str, Any], record: SpendRecord) -> None:
        """A spend file's figures into the ledger `data`: its settled spend, and its holds
        as open holds (a later run settles them by intent)."""
        run = data["runs"].get(record.run_id, 0.0)
        data["runs"][record.run_id] = run + record.total_usd
        data["total_usd"] += record.total_usd
        for intent, usd in record.open.items():
            data["open"][intent] = {"usd": usd, "run": record.run_id}

    async def fold_dead(self) -> None:
        """Fold the spend files of processes that are gone (a crash, a kill) into the
        ledger, under its lease."""
        records = await asyncio.to_thread(self.spend_records)
        dead = [r for h, r in records.items() if not self.heartbeat.is_alive(h)]
        if not dead:
            return
        async with self.changing():
            data = await asyncio.to_thread(self.read)
            for record in dead:
                self.fold(data, record)
            await asyncio.to_thread(self.write, data)
            for record in dead:
                await asyncio.to_thread(self.drop_spend, record.holder)

    # -- validation -----------------------------------------------------------------------

    def _checked(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self._invalid(LEDGER, f"it holds a JSON {type(data).__name__}, not an object")
        version = data.get("version", 1)
        if version not in (1, LEDGER_VERSION):
            raise self._invalid(LEDGER, f"format version {version!r} is not one this nbp "
                                        f"reads (1, {LEDGER_VERSION})")
        runs = _mapping(data.get("runs", {}), "runs", self._invalid)
        held = _mapping(data.get("open", {}), "open", self._invalid)
        opened: dict[str, dict[str, Any]] = {}
        for intent, hold in held.items():
            if not isinstance(hold, Mapping) or not isinstance(hold.get("run"), str):
                raise self._invalid(LEDGER, f"open.{intent[:40]} is not {{usd, run}}")
            opened[intent] = {"usd": _usd(hold.get("usd"), f"open.{intent[:40]}.usd",
                                          self._invalid),
                              "run": hold["run"]}
        return {
            "version": LEDGER_VERSION,
            "total_usd": _usd(data.get("total_usd", 0.0), "total_usd", self._invalid),
            "runs": {run: _usd(usd, f"runs.{run[:40]}", self._invalid)
                     for run, usd in runs.items()},
            "open": opened,
        }

    def _spend_record(self, rel: str, raw: bytes) -> SpendRecord:
        def invalid(_: str, why: str) -> LedgerInvalid:
            return self._invalid(rel, why)

        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise invalid(rel, f"it is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise invalid(rel, "it is not a JSON object")
        holder, run_id = data.get("holder"), data.get("run_id")
        if not isinstance(holder, str) or not isinstance(run_id, str):
            raise invalid(rel, "holder and run_id must be strings")
        if rel != f"{SPEND_DIR}/{holder}.json":
            raise invalid(rel, f"it names another process ({holder[:40]!r})")
        held = _mapping(data.get("open", {}), "open", invalid)
        return SpendRecord(
            holder, run_id, _usd(data.get("settled_usd", 0.0), "settled_usd", invalid),
            {intent: _usd(usd, f"open.{intent[:40]}", invalid) for intent, usd in held.items()},
        )

    def _invalid(self, rel: str, why: str) -> LedgerInvalid:
        return LedgerInvalid(f"{self.sink.uri(rel)} is not a spend ledger nbp can read: {why}; "
                             f"{REPAIR}")


def _mapping(value: Any, name: str, invalid: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise invalid(LEDGER, f"{name} is not an object of names")
    if len(value) > MAX_ENTRIES:
        raise invalid(LEDGER, f"{name} lists more than {MAX_ENTRIES:,} entries")
    return value


def _usd(value: Any, name: str, invalid: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(LEDGER, f"{name} is not a number")
    amount = float(value)
    if not math.isfinite(amount) or amount < 0:
        raise invalid(LEDGER, f"{name} is {value!r}: spend is a finite amount of 0 or more")
    return amount
