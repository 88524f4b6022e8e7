"""Supervision by risk (issue #14 §1): merchants' regions, signals computed by set-based SQL, early warnings."""
