"""The pages' words: 简体中文 by default, English on request (``?lang=en``, kept in a cookie)."""

from litestar import Request

LANGUAGES = ("zh", "en")
COOKIE = "lang"

_WORDS: dict[str, dict[str, str]] = {
    "app_name": {"zh": "预付卡资金托管", "en": "Prepaid escrow"},
    "sign_in": {"zh": "登录", "en": "Sign in"},
    "sign_out": {"zh": "退出", "en": "Sign out"},
    "phone": {"zh": "手机号", "en": "Mobile number"},
    "send_code": {"zh": "发送验证码", "en": "Send code"},
    "code": {"zh": "短信验证码", "en": "Code from the text message"},
    "code_sent": {
        "zh": "如果该号码可以接收短信，验证码已发送，请在 10 分钟内输入。",
        "en": "If this number can receive texts, a code is on its way; enter it within 10 minutes.",
    },
    "my_cards": {"zh": "我的预付卡", "en": "My cards"},
    "no_cards": {"zh": "您还没有预付卡。", "en": "You have no prepaid cards yet."},
    "remaining": {"zh": "剩余", "en": "Left"},
    "value_remaining": {"zh": "剩余价值", "en": "Value left"},
    "protected": {"zh": "银行托管保障", "en": "Protected by bank custody"},
    "unprotected": {"zh": "未托管部分", "en": "Not in custody"},
    "protected_explained": {
        "zh": "这部分钱存放在银行托管账户中，商家关店也能退还给您。",
        "en": "This money is held in the bank's escrow account; it comes back to you even if the shop closes.",
    },
    "unprotected_explained": {
        "zh": "这部分钱不在托管账户中，是您对商家的债权；关店时由先行赔付基金在限额内补偿。",
        "en": "This part is not in escrow: it is a claim on the shop; if it closes, the compensation fund pays "
        "within its limit.",
    },
    "all_protected": {
        "zh": "您剩余的全部金额都在银行托管中。",
        "en": "All the value you have left is held in bank custody.",
    },
    "pending_services": {"zh": "待确认的服务", "en": "Services awaiting your confirmation"},
    "no_pending": {"zh": "没有待确认的服务。", "en": "Nothing awaits your confirmation."},
    "confirm": {"zh": "确认", "en": "Confirm"},
    "dispute": {"zh": "有异议", "en": "Dispute"},
    "dispute_reason": {"zh": "异议原因", "en": "What went wrong"},
    "confirm_by": {"zh": "未处理将于此时自动确认", "en": "Confirms itself at"},
    "confirmed": {"zh": "已确认", "en": "Confirmed"},
    "disputed": {"zh": "已提出异议", "en": "Disputed"},
    "history": {"zh": "明细", "en": "History"},
    "refund": {"zh": "申请退款", "en": "Ask for a refund"},
    "refund_quote": {"zh": "退款试算", "en": "What a refund would pay"},
    "refund_request": {"zh": "确认申请退款", "en": "Request this refund"},
    "refunds": {"zh": "退款", "en": "Refunds"},
    "status": {"zh": "状态", "en": "Status"},
    "amount": {"zh": "金额", "en": "Amount"},
    "closures": {"zh": "关店清退", "en": "Closures"},
    "no_closures": {"zh": "没有关店清退记录。", "en": "No closure concerns your cards."},
    "presence_code": {"zh": "到店核销码", "en": "Presence code"},
    "presence_explained": {
        "zh": "在店内出示此码，商家录入后本次服务立即确认。约一分钟更新一次。",
        "en": "Show this code at the counter: the service is confirmed at once. It changes about every minute.",
    },
    "valid_until": {"zh": "有效期至", "en": "Valid until"},
    "merchant": {"zh": "商家", "en": "Shop"},
    "plan": {"zh": "套餐", "en": "Plan"},
    "sessions": {"zh": "次", "en": "sessions"},
    "days": {"zh": "天", "en": "days"},
    "back": {"zh": "返回", "en": "Back"},
    "error": {"zh": "操作未成功", "en": "That did not work"},
    "language": {"zh": "English", "en": "中文"},
    "counter": {"zh": "收银台", "en": "Counter"},
    "takeover": {"zh": "承接方案", "en": "Takeover offered"},
    "paid_state": {"zh": "已全部支付", "en": "all paid"},
    "in_progress": {"zh": "处理中", "en": "in progress"},
    "closure_unused": {"zh": "应退（未使用价值）", "en": "Owed to you (unused value)"},
    "closure_from_custody": {"zh": "托管账户退还", "en": "From bank custody"},
    "closure_set_off": {"zh": "商户待划拨款抵扣", "en": "Set off from the shop's payable"},
    "closure_fund_paid": {"zh": "先行赔付基金已付", "en": "Paid by the compensation fund"},
    "closure_fund_owed": {"zh": "先行赔付基金待付", "en": "Owed by the compensation fund"},
    "closure_fund_paid_later": {"zh": "先行赔付基金后续已付", "en": "Paid later by the fund"},
    "closure_unpaid_claim": {"zh": "未获赔付（对商家的债权）", "en": "Unpaid (your claim on the shop)"},
    "closure_transferred": {"zh": "转入承接商户", "en": "Moved to the successor"},
    "closure_assumed_by_successor": {"zh": "承接商户承担", "en": "Taken on by the successor"},
    "takeover_explained": {
        "zh": "商家关店，%s 提议承接您的卡（剩余次数和托管资金一并转移）。请在 %s 前选择；不同意将退款。",
        "en": "The shop is closing; %s offers to take your card over (what is left and its custodied money move "
        "with it). Decide by %s; if you decline you are refunded.",
    },
    "takeover_accept": {"zh": "同意承接", "en": "Accept"},
    "takeover_decline": {"zh": "不同意，退款", "en": "Decline, refund me"},
    "paid": {"zh": "已付", "en": "Paid"},
    "delivered": {"zh": "已消费（计价）", "en": "Delivered (as charged)"},
    "merchant_token": {"zh": "商户 API 令牌", "en": "Merchant API token"},
    "sell": {"zh": "售卡", "en": "Sell a card"},
    "record_service": {"zh": "登记服务", "en": "Record a service"},
    "card": {"zh": "卡号", "en": "Card"},
    "units": {"zh": "次数", "en": "Sessions"},
    "payable": {"zh": "待划拨给商户", "en": "Payable to you"},
    "todays_services": {"zh": "今日服务", "en": "Today's services"},
    "payouts": {"zh": "划拨记录", "en": "Payouts"},
    "pay_to": {"zh": "付款至托管账户", "en": "Pay into the escrow account"},
    "payment_reference": {"zh": "付款附言", "en": "Payment reference"},
}

_STATUS: dict[str, dict[str, str]] = {
    "awaiting_payment": {"zh": "待付款", "en": "awaiting payment"},
    "active": {"zh": "使用中", "en": "active"},
    "exhausted": {"zh": "已用完", "en": "used up"},
    "refunded": {"zh": "已退款", "en": "refunded"},
    "expired_refunded": {"zh": "到期已退款", "en": "expired, refunded"},
    "closed_settled": {"zh": "关店已清退", "en": "settled at closure"},
    "transferred": {"zh": "已承接", "en": "taken over"},
    "pending_confirmation": {"zh": "待确认", "en": "awaiting confirmation"},
    "confirmed": {"zh": "已确认", "en": "confirmed"},
    "voided": {"zh": "已撤销", "en": "voided"},
    "disputed": {"zh": "有异议", "en": "disputed"},
    "requested": {"zh": "已申请", "en": "requested"},
    "approved": {"zh": "已批准", "en": "approved"},
    "instructed": {"zh": "银行处理中", "en": "with the bank"},
    "paid": {"zh": "已退回", "en": "paid"},
    "rejected": {"zh": "已拒绝", "en": "rejected"},
    # the card's history (journal entry kinds, with held / released / voided for services)
    "card_paid": {"zh": "付款存入托管", "en": "paid into custody"},
    "consumption_held": {"zh": "服务待确认", "en": "service awaiting confirmation"},
    "consumption_released": {"zh": "服务确认，划拨商户", "en": "service confirmed, released to the shop"},
    "consumption_voided": {"zh": "服务撤销，退回卡内", "en": "service voided, back on the card"},
    "refund": {"zh": "退款", "en": "refund"},
}


def language(request: Request) -> str:
    asked = request.query_params.get("lang") or request.cookies.get(COOKIE)
    return asked if asked in LANGUAGES else "zh"


def words(lang: str) -> dict[str, str]:
    return {key: texts[lang] for key, texts in _WORDS.items()}


def status_words(lang: str) -> dict[str, str]:
    return {key: texts[lang] for key, texts in _STATUS.items()}
