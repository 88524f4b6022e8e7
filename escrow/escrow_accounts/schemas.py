from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escrow.kit.body import RequestModel
from escrow.kit.crypto import normalize_account_number


class EscrowAccountCreate(RequestModel):
    """An application for an escrow account at a custodian bank."""

    bank_id: str = Field(min_length=1, max_length=40, description="The custodian bank to apply at.")


class EscrowAccountActivate(RequestModel):
    """The bank's activation of an escrow account."""

    bank_account_number: str = Field(description="The escrow account's number at the bank; stored encrypted.")

    @field_validator("bank_account_number")
    @classmethod
    def _account(cls, value: str) -> str:
        return normalize_account_number(value)


class Reason(RequestModel):
    """A reason, kept with the change it explains."""

    reason: str = Field(min_length=1, max_length=500)


class EscrowAccountOut(BaseModel):
    """An escrow (custody) account of one merchant at one custodian bank."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    merchant_id: str
    bank_id: str
    status: str
    bank_account_masked: str | None
    rejection_reason: str | None
    freeze_reason: str | None
    created_at: datetime
    activated_at: datetime | None
