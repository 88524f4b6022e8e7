# ruff: noqa: RUF001 (Chinese text takes full-width punctuation)
"""The text of every notice (简体中文), in one place: ``render(kind, facts, link, tz)``.

``facts`` are the notice's ``params`` (figures fixed when the movement happened) with what the notices job looks
up when it renders them (the merchant's and the bank's names, the closure's statement once its plan exists)."""

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

PREFIX = "【预付卡托管】"


def yuan(fen: int) -> str:
    """Fen as yuan, to the fen: 12345 → ``123.45元``."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}元"


def local_time(value: str | datetime, tz: str) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    local = moment.astimezone(ZoneInfo(tz))
    return f"{local.year}年{local.month}月{local.day}日 {local.hour:02d}:{local.minute:02d}"


def local_date(value: str | date) -> str:
    day = date.fromisoformat(value) if isinstance(value, str) else value
    return f"{day.year}年{day.month}月{day.day}日"


def _closure_outcome(f: dict[str, Any]) -> str:
    """What the consumer will get from a closure: the statement of the plan when it exists, else a sentence."""
    item = f.get("statement")
    if not item:
        return (
            f"您卡内未使用的{yuan(f['unused'])}不会作废：清算方案确定后，托管资金将优先退还给您，"
            "不足部分由商家结算款抵扣或先行赔付基金垫付，届时可在页面查看您的结算单。"
        )
    if item["decision"] == "transfer":
        return f"根据清算方案，您的卡将由承接商家继续履行，随卡转移托管资金{yuan(item['transferred'])}。"
    parts = [f"托管资金退款{yuan(item['from_custody'])}"]
    if item["set_off"]:
        parts.append(f"商家结算款抵扣{yuan(item['set_off'])}")
    if item["fund_paid"] + item["fund_owed"]:
        parts.append(f"先行赔付{yuan(item['fund_paid'] + item['fund_owed'])}")
    text = f"根据清算方案，您将获得：{'，'.join(parts)}。"
    if item["unpaid"]:
        text += f"尚有{yuan(item['unpaid'])}未获偿付，记为您对商家的债权。"
    return text


def _dispute(f: dict[str, Any]) -> str:
    if f["outcome"] == "confirmed":
        return f"您对{f['merchant']}一笔{yuan(f['amount'])}消费的异议已处理：消费成立，该款项结算给商家。"
    return (
        f"您对{f['merchant']}一笔{yuan(f['amount'])}消费的异议已处理：消费已撤销，{yuan(f['amount'])}已退回您的卡内。"
    )


def _refund_approved(f: dict[str, Any]) -> str:
    text = f"您在{f['merchant']}的预付卡退款{yuan(f['amount'])}已批准"
    if f.get("due_on"):
        text += f"，将于{local_date(f['due_on'])}前退到您的账户"
    text += "。"
    if f.get("merchant_owes"):
        text += f"其中{yuan(f['merchant_owes'])}由商家另行偿付。"
    return text


_TEMPLATES = {
    "card_paid": lambda f, tz: (
        f"您在{f['merchant']}购买的预付卡已付款{yuan(f['amount'])}，资金由{f['bank']}托管，"
        f"其中受资金保护部分{yuan(f['protected'])}。"
    ),
    "service_recorded": lambda f, tz: (
        f"{f['merchant']}记录了您的一次消费{yuan(f['amount'])}。如有异议，请在{local_time(f['confirm_by'], tz)}前"
        "提出，逾期将自动确认。"
    ),
    "service_auto_confirmed": lambda f, tz: (
        f"{f['merchant']}记录的消费{yuan(f['amount'])}已过确认期限，已自动确认，该款项结算给商家。"
    ),
    "dispute_resolved": lambda f, tz: _dispute(f),
    "refund_approved": lambda f, tz: _refund_approved(f),
    "refund_paid": lambda f, tz: f"您在{f['merchant']}的预付卡退款{yuan(f['amount'])}已由{f['bank']}支付到账。",
    "closure": lambda f, tz: (
        f"{f['merchant']}{'宣布闭店' if f['mode'] == 'announced' else '被监管部门责令闭店'}，"
        f"自{local_date(f['effective_on'])}起停止经营。{_closure_outcome(f)}"
    ),
    "takeover_offered": lambda f, tz: (
        f"{f['merchant']}闭店，{f['successor']}提出承接您的预付卡。请在{local_time(f['deadline'], tz)}前"
        "选择接受承接或拒绝（拒绝将退款）。"
    ),
    "card_expiring": lambda f, tz: (
        f"您在{f['merchant']}的预付卡将于{local_date(f['valid_until'])}到期，剩余{yuan(f['remaining'])}。"
        "到期后余额不会作废，将按规定退款或延期。"
    ),
}
KINDS = tuple(_TEMPLATES)


def render(kind: str, facts: dict[str, Any], link: str, tz: str) -> str:
    """The message of a notice, with the link to the consumer's page of the card."""
    return f"{PREFIX}{_TEMPLATES[kind](facts, tz)}详情：{link}"
