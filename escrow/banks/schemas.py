from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from escrow.kit.body import RequestModel


class BankCreate(RequestModel):
    """A custodian bank to admit."""

    name: str = Field(min_length=1, max_length=200, examples=["Bank of Ningbo"])
    code: str = Field(pattern=r"^[A-Z0-9]{2,20}$", examples=["NBCB"], description="The bank's short code, unique.")
    signing_algorithm: Literal["hmac-sha256", "hmac-sm3"] = "hmac-sha256"


class BankOut(BaseModel):
    """A custodian bank."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    code: str
    signing_algorithm: str
    created_at: datetime


class BankCreated(BaseModel):
    """The admitted bank with its API token and request-signing secret, both shown once."""

    bank: BankOut
    token: str = Field(description="The bank's API token, shown once.")
    signing_secret: str = Field(description="The bank's request-signing secret, shown once.")
