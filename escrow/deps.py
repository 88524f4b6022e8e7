"""Typed names for what handlers receive from the request: its session, caller, keys and settings."""

from litestar.di import NamedDependency

from escrow.auth.tokens import Principal
from escrow.config import Settings
from escrow.kit.crypto import Keyring
from escrow.unit_of_work import DbSession

PrincipalDep = NamedDependency[Principal]
KeyringDep = NamedDependency[Keyring]
SettingsDep = NamedDependency[Settings]

__all__ = ["DbSession", "KeyringDep", "PrincipalDep", "SettingsDep"]
