"""The first-compensation fund: contributions, payouts to consumers of closed merchants, claims, recoveries."""
