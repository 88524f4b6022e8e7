from datetime import date
from typing import Literal

from pydantic import BaseModel, Field


class PublicCustody(BaseModel):
    """Whether the merchant's prepaid money is held in bank custody, where, and at what ratio new sales get."""

    in_bank_custody: bool = Field(description="The merchant has an escrow account a custodian bank activated.")
    custodian_banks: list[str] = Field(description="The banks holding its escrow accounts.")
    model: Literal["full", "ratio"] = Field(
        description="full: all of every card's price is held; ratio: a share set by its credit rating."
    )
    ratio_bp: int = Field(
        description="Share of the price of a card sold now that is held in custody, in basis points (10000 = 100 %)."
    )


class PublicClosure(BaseModel):
    """The merchant's closure: announced by itself or ordered by the regulator, from when, and how far along."""

    mode: str = Field(description="announced (by the merchant) or ordered (by the regulator).")
    status: str = Field(description="announced → frozen → settling → settled.")
    effective_on: date = Field(description="The business date the shop stops (its escrow account freezes).")


class PublicComplaints(BaseModel):
    """Complaints about the merchant the regulator upheld (wholly or partly) in the last year, by category; never
    their text nor who filed them."""

    since: date = Field(description="Counted from this date (a year ago) to today.")
    upheld: int
    partly_upheld: int
    by_category: dict[str, int] = Field(
        description="Upheld and partly upheld, per category (service_not_delivered, refund_refused, closure, "
        "contract_terms, other); categories without any are left out."
    )


class PublicMerchant(BaseModel):
    """What anyone may check about a merchant before paying (公示): custody, credit, white list, closing, upheld
    complaints. No personal data."""

    id: str
    name: str
    category: str = Field(description="gym, salon, training or other.")
    uscc: str = Field(description="Unified social credit code (统一社会信用代码).")
    status: str = Field(description="active, suspended, closing or closed.")
    custody: PublicCustody
    credit_rating: str = Field(description="The merchant's credit rating, A (best) to D.")
    white_list: bool = Field(
        description="On the 无事不扰 white list now: grade A and no major penalty, overdue refund, upheld complaint "
        "about money or closure over the last years, nor within the credit-repair period."
    )
    closing: bool = Field(description="A closure was announced or ordered, or the merchant is closing or closed.")
    closure: PublicClosure | None
    complaints_upheld: PublicComplaints
