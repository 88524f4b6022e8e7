from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escrow.kit.body import RequestModel
from escrow.kit.crypto import normalize_account_number
from escrow.kit.money import Money

BANK_REFERENCE = r"^[A-Za-z0-9_\-.:/]+$"


class FundBankAccount(RequestModel):
    """The first-compensation fund's own account at a custodian bank."""

    bank_id: str = Field(min_length=1, max_length=40, description="The bank holding the fund's own account.")
    bank_account_number: str = Field(description="The fund's account number at that bank; stored encrypted.")

    @field_validator("bank_account_number")
    @classmethod
    def _account(cls, value: str) -> str:
        return normalize_account_number(value)


class FundBankAccountOut(BaseModel):
    """The first-compensation fund's own bank account, masked."""

    model_config = ConfigDict(from_attributes=True)

    bank_id: str
    bank_account_masked: str
    updated_at: datetime


class ContributionCreate(RequestModel):
    """Money paid into the first-compensation fund, as the bank received it."""

    source_kind: Literal["insurer", "government", "guarantee_deposit", "other"] = Field(
        description="Where the money comes from: an insurer, a government budget, merchants' guarantee deposits, or "
        "other."
    )
    source_name: str = Field(min_length=1, max_length=200, description="Who paid it in (insurer, agency, merchant).")
    amount: Money
    bank_transaction_id: str = Field(
        min_length=1, max_length=100, pattern=BANK_REFERENCE, description="The bank's id of the money received."
    )


class ContributionOut(BaseModel):
    """A contribution recorded in the first-compensation fund."""

    id: str
    source_kind: str = Field(description="insurer, government, guarantee_deposit or other.")
    source_name: str
    amount: Money
    bank_transaction_id: str
    received_at: datetime
    owed_payments_made: int = Field(description="Owed compensation paid out of it at once, in queue order.")


class RecoveryCreate(RequestModel):
    """Money paid back to the fund on its subrogated claim against a closed merchant's escrow account."""

    escrow_account_id: str = Field(min_length=1, max_length=40, description="Whose subrogated claim was paid.")
    amount: Money
    bank_transaction_id: str = Field(
        min_length=1, max_length=100, pattern=BANK_REFERENCE, description="The bank's id of the money received."
    )
    note: str | None = Field(default=None, max_length=500)


class RecoveryOut(BaseModel):
    """A recovery recorded on one of the fund's subrogated claims."""

    id: str
    escrow_account_id: str
    amount: Money
    bank_transaction_id: str
    note: str | None
    received_at: datetime
    owed_payments_made: int = Field(description="Owed compensation paid out of it at once, in queue order.")


class ClaimOut(BaseModel):
    """The fund's subrogated claim on one closed merchant's escrow account."""

    escrow_account_id: str
    merchant_id: str
    paid: Money = Field(description="What the fund paid consumers of this escrow account (its subrogated claim).")
    recovered: Money = Field(description="What was paid back to the fund on this claim.")
    outstanding: Money = Field(description="paid less recovered.")


class FundOverview(BaseModel):
    """The first-compensation fund's position, in fen."""

    cash: Money = Field(description="The fund's bank balance per the ledger (payouts not yet executed included).")
    available: Money = Field(description="What it can still commit: cash less holds and settlements under way.")
    contributions: Money = Field(description="Everything paid into the fund so far.")
    payable: Money = Field(description="Owed to consumers, instructed, awaiting the bank.")
    claims_outstanding: Money = Field(description="Σ subrogated claims on merchants not yet recovered.")
    owed_to_consumers: Money = Field(description="Compensation the fund could not pay yet (the queue).")
    owed_items: int = Field(description="Closure items waiting in the queue for compensation.")
    bank_account: FundBankAccountOut | None = Field(description="The fund's own account; none until set.")
