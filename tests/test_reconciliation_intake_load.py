"""A large camt.053 upload neither blocks the event loop nor holds memory in proportion to what it skips."""

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from escrow.config import Settings
from escrow.reconciliation import parsing
from tests.parties import key
from tests.reconciling import BANK_ACCOUNT_NUMBER, desk, today

NS = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"


def skipped(size: int) -> str:
    """About ``size`` bytes of elements the parser skips (a transactions summary, repeated), some nested deep."""
    one = "<TxsSummry><TtlNtries><NbOfNtries>7</NbOfNtries><Sum>1.00</Sum></TtlNtries></TxsSummry>"
    return one * (size // len(one))


def padded_document(size: int) -> str:
    """A valid one-entry statement, 0 → 1 yuan, with ``size`` bytes of skipped elements around its parts."""
    day = today().isoformat()
    pad = skipped(size // 4)
    balance = (
        '<Bal><Tp><CdOrPrtry><Cd>{}</Cd></CdOrPrtry></Tp><Amt Ccy="CNY">{}</Amt><CdtDbtInd>CRDT</CdtDbtInd>'
        f"<Dt><Dt>{day}</Dt></Dt></Bal>"
    )
    entry = (
        '<Ntry><Amt Ccy="CNY">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        f"<BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt><AcctSvcrRef>FEE-1</AcctSvcrRef></Ntry>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{NS}"><BkToCstmrStmt><GrpHdr><MsgId>M</MsgId>'
        f"</GrpHdr><Stmt><Id>S</Id><Acct><Id><Othr><Id>{BANK_ACCOUNT_NUMBER}</Id></Othr></Id><Ownr>{pad}</Ownr>"
        f"</Acct>{pad}{balance.format('OPBD', '0.00')}{balance.format('CLBD', '1.00')}{pad}{entry}<AddtlStmtInf/>"
        f"</Stmt><SplmtryData><Envlp>{pad}</Envlp></SplmtryData></BkToCstmrStmt></Document>"
    )


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"payout_hour": None})


class TestTheEventLoopIsNotBlocked:
    async def test_the_parse_runs_in_a_worker_thread_and_the_loop_keeps_ticking(
        self, client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shop = await desk(client, session)
        parsed_in: set[int] = set()
        feed = parsing._Camt053._next

        def recording(self):  # every read of the document: in which thread
            parsed_in.add(threading.get_ident())
            return feed(self)

        monkeypatch.setattr(parsing._Camt053, "_next", recording)
        body = padded_document(6 * 1024 * 1024).encode()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        started = time.perf_counter()
        response = await client.post(
            "/v1/statements/camt053",
            content=body,
            headers={**key(), "Content-Type": "application/xml"},
            auth=shop.bank.auth,
        )
        took = time.perf_counter() - started
        done.set()
        await ticking
        assert response.status_code == 201, response.text
        assert response.json()["statements"][0]["line_count"] == 1
        assert parsed_in and threading.get_ident() not in parsed_in  # never on the loop's thread
        # relative, not absolute: no single stall of the loop comes near the time the upload took
        assert max(gaps) < took / 3, (max(gaps), took)


class TestMemoryIsBounded:
    def test_skipped_elements_cost_no_memory_in_proportion_to_their_size(self, tmp_path: Path) -> None:
        """In a process of its own (peak RSS is per process): 16 MiB of skipped elements, in one subtree and
        spread around the statement, raise the parser's peak memory by well under the file's size (libxml2's
        tree costs about thirty times the text it holds, so keeping them would cost hundreds of MiB)."""
        path = tmp_path / "padded.xml"
        path.write_text(padded_document(16 * 1024 * 1024))
        script = textwrap.dedent(
            f"""
            import resource
            from escrow.reconciliation.parsing import camt053_statements
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            count = sum(len(list(s.lines)) for s in camt053_statements({str(path)!r}, "Asia/Shanghai"))
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(count, (after - before) * 1024)
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        count, grown = map(int, out.split())
        assert count == 1
        assert grown < path.stat().st_size / 4, f"peak memory grew {grown:,} bytes for a {path.stat().st_size:,}"
