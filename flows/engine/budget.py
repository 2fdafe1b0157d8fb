"""The hard spending cap: no submission that could take spend past `max_usd`.

Spend counts what finished cells cost plus a reservation for every task in flight (its price
estimate), so concurrent submissions cannot overshoot together. A submission that does not
fit waits while other tasks are in flight (they may fail and cost nothing); once nothing is in
flight and it still does not fit, the budget is exhausted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


class BudgetExhausted(Exception):
    """The next submission could take spend past the cap."""


@dataclass
class Budget:
    max_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    exhausted: bool = False
    _changed: asyncio.Condition | None = field(default=None, repr=False)

    def _fits(self, estimate_usd: float) -> bool:
        committed = self.spent_usd + self.reserved_usd + estimate_usd
        return self.max_usd is None or committed <= self.max_usd + 1e-9

    async def reserve(self, estimate_usd: float) -> None:
        """Reserve the worst case of one submission, or raise `BudgetExhausted`."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.exhausted or self._fits(estimate_usd) or self.reserved_usd <= 1e-12
            )
            if self.exhausted or not self._fits(estimate_usd):
                self.exhausted = True
                self._changed.notify_all()
                raise BudgetExhausted(
                    f"budget of ${self.max_usd:.2f} reached: ${self.spent_usd:.2f} spent; "
                    f"the next image (~${estimate_usd:.3f}) could exceed it"
                )
            self.reserved_usd += estimate_usd

    async def settle(self, estimate_usd: float, actual_usd: float) -> None:
        """Turn a reservation into spend (0 for a task that was not billed)."""
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
