"""Prepaid escrow ledger: consumers' prepayments held in bank custody and released per service rendered."""

__version__ = "0.1.0"
