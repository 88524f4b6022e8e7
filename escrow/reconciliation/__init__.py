"""Bank reconciliation: statements (JSON, camt.053) matched against custody_cash; breaks and their resolution."""
