from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escrow.kit.body import RequestModel
from escrow.kit.crypto import normalize_account_number
from escrow.kit.money import Money

BANK_REFERENCE = r"^[A-Za-z0-9_\-.:/]+$"


class FundBankAccount(RequestModel):
    bank_id: str = Field(min_length=1, max_length=40, description="The bank holding the fund's own account.")
    bank_account_number: str = Field(description="The fund's account number at that bank; stored encrypted.")

    @field_validator("bank_account_number")
    @classmethod
    def _account(cls, value: str) -> str:
        return normalize_account_number(value)


class FundBankAccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    bank_id: str
    bank_account_masked: str
    updated_at: datetime


class ContributionCreate(RequestModel):
    source_kind: Literal["insurer", "government", "guarantee_deposit", "other"]
    source_name: str = Field(min_length=1, max_length=200, description="Who paid it in (insurer, agency, merchant).")
    amount: Money
    bank_transaction_id: str = Field(
        min_length=1, max_length=100, pattern=BANK_REFERENCE, description="The bank's id of the money received."
    )


class ContributionOut(BaseModel):
    id: str
    source_kind: str
    source_name: str
    amount: Money
    bank_transaction_id: str
    received_at: datetime
    owed_payments_made: int = Field(description="Owed compensation paid out of it at once, in queue order.")


class RecoveryCreate(RequestModel):
    escrow_account_id: str = Field(min_length=1, max_length=40, description="Whose subrogated claim was paid.")
    amount: Money
    bank_transaction_id: str = Field(min_length=1, max_length=100, pattern=BANK_REFERENCE)
    note: str | None = Field(default=None, max_length=500)


class RecoveryOut(BaseModel):
    id: str
    escrow_account_id: str
    amount: Money
    bank_transaction_id: str
    note: str | None
    received_at: datetime
    owed_payments_made: int


class ClaimOut(BaseModel):
    escrow_account_id: str
    merchant_id: str
    paid: Money = Field(description="What the fund paid consumers of this escrow account (its subrogated claim).")
    recovered: Money
    outstanding: Money


class FundOverview(BaseModel):
    cash: Money = Field(description="The fund's bank balance per the ledger (payouts not yet executed included).")
    available: Money = Field(description="What it can still commit: cash less holds and settlements under way.")
    contributions: Money
    payable: Money = Field(description="Owed to consumers, instructed, awaiting the bank.")
    claims_outstanding: Money
    owed_to_consumers: Money = Field(description="Compensation the fund could not pay yet (the queue).")
    owed_items: int
    bank_account: FundBankAccountOut | None
