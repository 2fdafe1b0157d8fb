"""The hard spending cap: no submission that could take spend past `max_usd`.

Spend counts what finished cells cost plus a reservation for every task in flight (its price
estimate), so concurrent submissions cannot overshoot together.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class BudgetExhausted(Exception):
    """The next submission could take spend past the cap."""


@dataclass
class Budget:
    max_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    exhausted: bool = False
    _reservations: int = field(default=0, repr=False)

    def reserve(self, estimate_usd: float) -> None:
        """Reserve the worst case of one submission or raise `BudgetExhausted`."""
        committed = self.spent_usd + self.reserved_usd + estimate_usd
        if self.max_usd is not None and committed > self.max_usd + 1e-9:
            self.exhausted = True
            raise BudgetExhausted(
                f"budget of ${self.max_usd:.2f} reached: ${self.spent_usd:.2f} spent, "
                f"${self.reserved_usd:.2f} in flight; the next image (~${estimate_usd:.3f}) "
                "could exceed it"
            )
        self.reserved_usd += estimate_usd
        self._reservations += 1

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        """Turn a reservation into spend (0 for a task that was not billed)."""
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
        self._reservations -= 1
