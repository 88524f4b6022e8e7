"""How a card's price is split, to the fen, with nothing lost or created (domain.md §4).

Rules, all in integer fen:
- The value of units ``k+1 … k+u`` of a card of price P and N units is ``⌊P·(k+u)/N⌋`` minus the value
  already taken for units, so the last unit closes the card exactly, whatever was voided in between.
- The custodied share of everything that left the card is ``⌈out·r/10000⌉`` for a ratio of r basis points,
  rounded *up* so custody never holds less than its ratio; a movement's custodied part is that cumulative share
  minus what was already taken from custody, kept within what each part still holds. A voided service gives
  back the custodied part it was held with, so after voids the card's custody can sit a fen or two below its
  share until its next movement, which takes the share again; no fen is ever lost or created.
- Period memberships: day k of D is worth ``⌊P·k/D⌋ - ⌊P·(k-1)/D⌋``.
"""

from dataclasses import dataclass

BP = 10_000  # basis points in one


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def protected_part_of_price(price: int, ratio_bp: int) -> int:
    """The custodied part of a card's price (the rest is the merchant's obligation outside custody)."""
    return ceil_div(price * ratio_bp, BP)


def unit_value(price: int, units_total: int, units_used: int, units: int, consumed: int) -> int:
    """Money value of ``units`` more units, given ``units_used`` already taken for ``consumed`` fen."""
    value = price * (units_used + units) // units_total - consumed
    return max(0, min(value, price - consumed))


def day_value(price: int, days: int, day: int) -> int:
    """Value of day ``day`` (1-based) of a ``days``-day membership."""
    return price * day // days - price * (day - 1) // days


@dataclass(frozen=True, slots=True)
class CardMoney:
    """The money state of a card the splitting rules need."""

    price: int
    ratio_bp: int
    protected_paid: int
    out: int  # everything that left the card or is held on it: consumed + refunded
    protected_out: int

    @property
    def protected_remaining(self) -> int:
        return self.protected_paid - self.protected_out

    @property
    def unprotected_remaining(self) -> int:
        return (self.price - self.protected_paid) - (self.out - self.protected_out)

    @property
    def remaining(self) -> int:
        return self.price - self.out


def split(card: CardMoney, amount: int) -> tuple[int, int]:
    """(custodied, unprotected) parts of ``amount`` fen leaving the card next."""
    if not 0 <= amount <= card.remaining:
        raise ValueError(f"{amount} fen is more than the card's remaining {card.remaining} fen")
    target = min(ceil_div((card.out + amount) * card.ratio_bp, BP), card.protected_paid)
    low = max(0, amount - card.unprotected_remaining)
    high = min(amount, card.protected_remaining)
    protected = min(max(target - card.protected_out, low), high)
    return protected, amount - protected
