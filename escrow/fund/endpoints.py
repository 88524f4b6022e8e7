from litestar import get, post, put
from litestar.params import JSONBody

from escrow.auth.guards import requires
from escrow.deps import DbSession, KeyringDep, PrincipalDep, SettingsDep
from escrow.errors import problem_responses
from escrow.fund import service
from escrow.fund.schemas import (
    ClaimOut,
    ContributionCreate,
    ContributionOut,
    FundBankAccount,
    FundBankAccountOut,
    FundOverview,
    RecoveryCreate,
    RecoveryOut,
)
from escrow.kit.money import Money
from escrow.kit.params import Limit
from escrow.models import FundContribution

TAGS = ["fund"]


def _contribution_out(row: FundContribution, owed_payments_made: int) -> ContributionOut:
    return ContributionOut(
        id=row.id,
        source_kind=row.source_kind,
        source_name=row.source_name,
        amount=Money(amount=row.amount),
        bank_transaction_id=row.bank_transaction_id,
        received_at=row.received_at,
        owed_payments_made=owed_payments_made,
    )


@put(
    "/v1/fund/bank-account",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Set the first-compensation fund's own account at a bank (where its payouts leave from)",
    responses=problem_responses(401, 403, 422),
)
async def set_fund_bank_account(
    data: JSONBody[FundBankAccount], db_session: DbSession, keyring: KeyringDep
) -> FundBankAccountOut:
    """Sets, or replaces, the fund's own account at a custodian bank (stored encrypted): the fund's payouts to consumers
    are instructed to that bank. A closure needing the fund is refused with 409 `fund_not_ready` until it is set; an
    unknown bank is refused with 422.
    """
    return FundBankAccountOut.model_validate(await service.set_bank_account(db_session, keyring, data))


@get(
    "/v1/fund",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="The fund: cash, what it can still commit, what it owes consumers, its claims on merchants",
    responses=problem_responses(401, 403),
)
async def fund_overview(db_session: DbSession) -> FundOverview:
    """Returns the fund's position: its cash, what it can still commit to closures, contributions, what it owes
    consumers (instructed, and queued because it was short), its outstanding claims on merchants, and its bank
    account.
    """
    view = await service.overview(db_session)
    account = view.pop("bank_account")
    return FundOverview(
        **{key: Money(amount=value) for key, value in view.items() if key != "owed_items"},
        owed_items=view["owed_items"],
        bank_account=FundBankAccountOut.model_validate(account) if account else None,
    )


@post(
    "/v1/fund/contributions",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Record money paid into the fund, with its source; what the fund owes consumers is paid from it",
    responses=problem_responses(401, 403, 409, 422),
)
async def contribute(
    data: JSONBody[ContributionCreate], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> ContributionOut:
    """Records money paid into the fund with its source (Dr fund_cash, Cr fund_contributions); compensation the fund
    still owes is paid out of it at once, in queue order. The same bank transaction id recorded again answers with
    the earlier contribution; with different details it is refused with 409 `conflict`; an amount of 0 with 422.
    """
    row, paid = await service.contribute(db_session, principal, data, settings.closure_batch_size)
    return _contribution_out(row, paid)


@get(
    "/v1/fund/contributions",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Contributions to the fund, newest first",
    responses=problem_responses(401, 403, 422),
)
async def list_contributions(db_session: DbSession, limit: Limit = 100) -> list[ContributionOut]:
    """Lists contributions to the fund, newest first, up to `limit`."""
    return [_contribution_out(row, 0) for row in await service.contributions(db_session, limit)]


@get(
    "/v1/fund/claims",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="The fund's subrogated claims per closed merchant's escrow account: paid, recovered, outstanding",
    responses=problem_responses(401, 403),
)
async def list_claims(db_session: DbSession) -> list[ClaimOut]:
    """Lists the fund's subrogated claims, one per closed merchant's escrow account: what the fund paid that merchant's
    consumers, what was recovered, and what is outstanding.
    """
    return [
        ClaimOut(
            escrow_account_id=c["escrow_account_id"],
            merchant_id=c["merchant_id"],
            paid=Money(amount=c["paid"]),
            recovered=Money(amount=c["recovered"]),
            outstanding=Money(amount=c["outstanding"]),
        )
        for c in await service.claims(db_session)
    ]


@post(
    "/v1/fund/recoveries",
    guards=[requires("regulator")],
    tags=TAGS,
    summary="Record a recovery on a subrogated claim (the merchant or its liquidator paid the fund back)",
    responses=problem_responses(401, 403, 409, 422),
)
async def recover(
    data: JSONBody[RecoveryCreate], db_session: DbSession, principal: PrincipalDep, settings: SettingsDep
) -> RecoveryOut:
    """Records money paid back on the fund's subrogated claim against an escrow account: the claim goes down in both the
    fund's and the merchant's books, and owed compensation is paid out of it at once. The same bank transaction id
    again answers with the earlier recovery (409 `conflict` if its details differ); an amount above the outstanding
    claim is refused with 422.
    """
    row, paid = await service.recover(db_session, principal, data, settings.closure_batch_size)
    return RecoveryOut(
        id=row.id,
        escrow_account_id=row.escrow_account_id,
        amount=Money(amount=row.amount),
        bank_transaction_id=row.bank_transaction_id,
        note=row.note,
        received_at=row.received_at,
        owed_payments_made=paid,
    )
