"""Text messages to consumers' phones: a sender interface (a gateway over HTTP, or the development sink) behind a
transactional outbox, so a message is queued in the transaction that decided it and sent once after commit."""

from escrow.sms.outbox import SmsDispatcher, deliver_due, queue
from escrow.sms.sender import (
    DevSmsSink,
    HttpGatewaySmsSender,
    SmsOperationalError,
    SmsRefused,
    SmsSender,
    sender_for,
    sign_gateway_request,
)

__all__ = [
    "DevSmsSink",
    "HttpGatewaySmsSender",
    "SmsDispatcher",
    "SmsOperationalError",
    "SmsRefused",
    "SmsSender",
    "deliver_due",
    "queue",
    "sender_for",
    "sign_gateway_request",
]
