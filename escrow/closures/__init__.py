"""Closures: freeze, settlement plan and execution, takeover by a successor, surplus."""
