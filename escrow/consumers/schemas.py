from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escrow.kit.body import RequestModel
from escrow.kit.crypto import normalize_phone


class ConsumerRegister(RequestModel):
    """A consumer, identified by phone number."""

    phone: str = Field(
        description="Mainland mobile number; only a keyed hash and a masked form are kept. Normalized first "
        "(Unicode NFKC, so full-width digits count as ASCII ones; spaces, dashes and a +86 prefix dropped): one phone "
        "is one consumer however it is typed. Digits of other scripts are refused.",
        examples=["13812345678"],
    )

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str) -> str:
        return normalize_phone(value)


class ConsumerOut(BaseModel):
    """A consumer, shown with a masked phone number only."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The consumer's id (random: it tells nothing of when the consumer was created).")
    phone_masked: str
    created_at: datetime = Field(
        description="For a merchant, when it registered this consumer at its point of sale; for the consumer and "
        "the regulator, when the consumer was created."
    )


class SignInCodeRequest(ConsumerRegister):
    """A request for a one-time sign-in code, sent by SMS to the phone."""


class SignInCodeSent(BaseModel):
    """The answer to a code request: the same whether the phone is known or not, and never the code."""

    sent_to: str = Field(description="The phone the code is sent to, masked.", examples=["138****5678"])
    expires_in_seconds: int = Field(description="How long the code is valid once sent.")


class ConsumerTokenRequest(ConsumerRegister):
    """A consumer's sign-in: phone number and one-time code."""

    code: str = Field(pattern=r"^\d{6}$")


class ConsumerTokenIssued(BaseModel):
    """The signed-in consumer and its API token, shown once."""

    consumer: ConsumerOut
    token: str = Field(description="The consumer's API token, shown once.")
