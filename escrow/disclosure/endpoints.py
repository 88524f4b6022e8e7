from typing import Annotated

from litestar import get
from litestar.params import QueryParameter

from escrow.deps import DbSession, SettingsDep
from escrow.disclosure import service
from escrow.disclosure.schemas import PublicMerchant
from escrow.errors import problem_responses
from escrow.kit.pagination import Page, page_of
from escrow.kit.params import Cursor, path_id

TAGS = ["public"]
PUBLIC_MAX_LIMIT = 50
PublicLimit = Annotated[
    int, QueryParameter(ge=1, le=PUBLIC_MAX_LIMIT, description=f"Items per page, 1 to {PUBLIC_MAX_LIMIT}.")
]
Query = Annotated[
    str,
    QueryParameter(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
        description="A part of the merchant's name, or its unified social credit code (exact); at most 100 characters.",
    ),
]


@get(
    "/v1/public/merchants",
    tags=TAGS,
    summary="Anyone: find a merchant by name or credit code, and check it before paying",
    responses=problem_responses(422),
)
async def search_merchants(
    db_session: DbSession, settings: SettingsDep, q: Query, cursor: Cursor = None, limit: PublicLimit = 20
) -> Page[PublicMerchant]:
    """Anonymous. Merchants whose name contains `q` (case-insensitive) or whose unified social credit code is `q`,
    in id order, cursor-paginated, each with what the public may check: bank custody and the ratio new sales get,
    credit rating, white-list status (null: not assessed yet), closure, and complaints upheld in the last year.
    """
    rows = await service.search(db_session, settings, q, cursor, limit)
    return page_of(rows, limit, lambda m: m, lambda m: m.id)


@get(
    "/v1/public/merchants/{merchant_id:str}",
    tags=TAGS,
    summary="Anyone: what the public may check about a merchant",
    responses=problem_responses(404),
)
async def public_merchant(
    merchant_id: Annotated[str, path_id("merchant")], db_session: DbSession, settings: SettingsDep
) -> PublicMerchant:
    """Anonymous. One merchant's public facts, as in the search; no personal data."""
    return await service.one(db_session, settings, merchant_id)
