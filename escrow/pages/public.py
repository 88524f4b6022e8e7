"""The public check (公示) at /public: anyone, signed in or not, finds a merchant by name or credit code and sees
what GET /v1/public/merchants answers — the page calls that handler. 简体中文 by default.

It is deliberately not under ``PAGE_PREFIXES`` (escrow/pages/session.py): the page needs no session, so a stale
session cookie must not turn it into a sign-in redirect; and it has no form that changes anything (the search is a
GET), so CSRF has nothing to protect.
"""

from typing import Annotated

from litestar import Request, get
from litestar.params import QueryParameter
from litestar.response import Template

from escrow.deps import DbSession, SettingsDep
from escrow.disclosure import endpoints as disclosure_api
from escrow.kit.params import path_id
from escrow.pages.consumer import context

SearchText = Annotated[
    str | None, QueryParameter(max_length=100, pattern=r"^[^\x00]*$", description="Name or credit code.")
]


@get("/public", include_in_schema=False)
async def public_page(request: Request, db_session: DbSession, settings: SettingsDep, q: SearchText = None) -> Template:
    query = (q or "").strip()
    found = None
    if query:
        found = (
            await disclosure_api.search_merchants.fn(
                db_session=db_session, settings=settings, q=query, cursor=None, limit=20
            )
        ).items
    return Template("public/search.html", context=context(request, q=query, merchants=found))


@get("/public/merchants/{merchant_id:str}", include_in_schema=False)
async def public_merchant_page(
    request: Request, merchant_id: Annotated[str, path_id("merchant")], db_session: DbSession, settings: SettingsDep
) -> Template:
    merchant = await disclosure_api.public_merchant.fn(
        merchant_id=merchant_id, db_session=db_session, settings=settings
    )
    return Template("public/search.html", context=context(request, q="", merchants=[merchant]))


ROUTES = [public_page, public_merchant_page]
