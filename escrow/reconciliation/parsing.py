"""The two statement formats read into one shape: a header, then its lines as a stream.

JSON statements are validated by their pydantic model (``schemas.StatementIn``, published as a JSON Schema).
ISO 20022 camt.053 documents (one or many ``Stmt`` per file) are read with lxml's ``iterparse`` — entities are
never resolved, no network and no DTD are loaded, and a document that declares a DTD at all is refused before
its first element is read — one ``Ntry`` at a time, each entry and statement freed with what came before it once
read, so memory stays bounded whatever the number of entries (elements outside the entries are freed only at the
next entry or statement: a hostile document costs memory in proportion to its size, hence the size limits).
Amounts are parsed with ``Decimal`` into exact fen: more than two decimals, a currency other than CNY or a zero
amount is refused, naming the element and its line.
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Any, ClassVar, Literal, NamedTuple
from zoneinfo import ZoneInfo

from lxml import etree
from pydantic import ValidationError

from escrow.errors import EscrowError
from escrow.reconciliation.schemas import StatementIn

CAMT053_NAMESPACE = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:camt\.053\.001\.(0[2-9]|1[0-3])$")
_AMOUNT = re.compile(r"^[0-9]{1,13}(\.[0-9]{1,2})?$")
_NOT_PROVIDED = "NOTPROVIDED"  # what banks put in EndToEndId when the payer gave none
_ENTRY_NAMES = (
    *("Amt", "CdtDbtInd", "Sts", "Cd", "BookgDt", "ValDt", "Dt", "DtTm", "AcctSvcrRef", "AddtlNtryInf", "NtryDtls"),
    *("TxDtls", "Refs", "EndToEndId", "InstrId", "RmtInf", "Strd", "CdtrRefInf", "Ref", "Ustrd", "NtryRef", "Ntry"),
)
OPENING_CODES = ("OPBD", "PRCD")  # opening booked; previously closed booked (the day before's closing)
CLOSING_CODE = "CLBD"
_ROOT = "the root element must be an ISO 20022 camt.053 Document"


class StatementInvalid(EscrowError):
    """A statement refused as a whole; ``errors`` names the field or element (and its line) and the rule."""

    code: ClassVar[str] = "statement_invalid"
    status: ClassVar[int] = 422
    title: ClassVar[str] = "Statement refused"

    def __init__(self, where: str, message: str, *, line: int | None = None) -> None:
        at = f" (line {line})" if line else ""
        error: dict[str, Any] = {"field": where, "message": message}
        if line:
            error["line"] = line
        super().__init__(f"{where}{at}: {message}", errors=[error])


class StatementMalformed(StatementInvalid):
    code = "statement_malformed"
    title = "Statement is not well-formed"


class StatementUnsafe(StatementInvalid):
    code = "statement_unsafe"
    title = "Statement uses XML features that are refused"


class StatementTooLarge(EscrowError):
    code = "statement_too_large"
    status = 413
    title = "Statement too large"


class Line(NamedTuple):
    bank_transaction_id: str
    end_to_end_id: str | None
    direction: Literal["credit", "debit"]
    amount: int  # fen, positive
    value_date: date
    booking_date: date
    text: str | None


@dataclass(frozen=True)
class Header:
    format: Literal["json", "camt053"]
    account: str  # an escrow account id, or (camt.053) the bank account number as the bank quotes it
    business_date: date
    opening: int  # fen, signed
    closing: int
    bank_statement_id: str | None
    message_id: str | None
    where: str  # where the statement is in its document, for errors


@dataclass
class ParsedStatement:
    header: Header
    lines: Iterator[Line]  # a stream: read it to the end before asking for the next statement


# --- JSON ------------------------------------------------------------------------------------------------------


def json_statement(data: StatementIn) -> ParsedStatement:
    header = Header(
        "json",
        data.escrow_account_id,
        data.business_date,
        data.opening_balance.amount,
        data.closing_balance.amount,
        data.statement_id,
        None,
        "body",
    )

    def lines() -> Iterator[Line]:
        for n, line in enumerate(data.lines):
            check_booking_date(line.booking_date, header, f"lines[{n}].booking_date")
            yield Line(
                line.bank_transaction_id,
                line.end_to_end_reference,
                line.direction,
                line.amount.amount,
                line.value_date,
                line.booking_date,
                line.text,
            )

    return ParsedStatement(header, lines())


def json_line(line: Line) -> dict[str, Any]:
    """A line in the JSON statement format (the inverse of reading one)."""
    return {
        "bank_transaction_id": line.bank_transaction_id,
        "amount": {"amount": line.amount, "currency": "CNY"},
        "direction": line.direction,
        "value_date": line.value_date.isoformat(),
        "booking_date": line.booking_date.isoformat(),
        "end_to_end_reference": line.end_to_end_id,
        "text": line.text,
    }


def json_file_statement(raw: bytes) -> ParsedStatement:
    """A JSON statement read from a file (the API validates its body itself)."""
    try:
        return json_statement(StatementIn.model_validate_json(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise StatementMalformed("body", first["msg"]) from exc
        raise StatementInvalid(where, first["msg"]) from exc


def check_booking_date(booked: date, header: Header, where: str, line: int | None = None) -> None:
    if booked > header.business_date:
        raise StatementInvalid(
            where, f"booked on {booked}, after the statement's business date {header.business_date}", line=line
        )


# --- camt.053 --------------------------------------------------------------------------------------------------


def camt053_statements(source: str | IO[bytes], timezone: str) -> Iterator[ParsedStatement]:
    """The statements of a camt.053 document (a path or a binary file), streamed."""
    return _Camt053(source, ZoneInfo(timezone)).statements()


class _Camt053:
    def __init__(self, source: str | IO[bytes], zone: ZoneInfo) -> None:
        self.zone = zone
        self.events = etree.iterparse(
            source,
            events=("start", "end"),
            tag=("{*}Document", "{*}GrpHdr", "{*}Stmt", "{*}Ntry"),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
        self.ns = ""
        self._tags: dict[str, str] = {}
        self.message_id: str | None = None
        self.statement_no = 0

    def _next(self) -> tuple[str, Any] | None:
        try:
            return next(self.events)
        except StopIteration:
            return None
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (None, None)
            message = exc.msg or str(exc)
            raise StatementMalformed(
                "document", f"not well-formed XML at line {line}, column {column}: {message}", line=line
            ) from exc

    def _q(self, name: str) -> str:
        tag = self._tags.get(name)
        if tag is None:  # names are few: each is built once
            tag = self._tags[name] = f"{{{self.ns}}}{name}"
        return tag

    def statements(self) -> Iterator[ParsedStatement]:
        seen_document = False
        while (event := self._next()) is not None:
            kind, element = event
            local = etree.QName(element).localname
            if kind == "start" and local == "Document" and not seen_document:
                self._check_document(element)
                if element.getparent() is not None:  # a Document wrapped in another element
                    raise StatementInvalid("Document", _ROOT, line=element.sourceline)
                seen_document = True
            elif not seen_document:
                raise StatementInvalid("Document", _ROOT)
            elif kind == "end" and local == "GrpHdr":
                self.message_id = _text(element.find(self._q("MsgId")))
            elif kind == "start" and local == "Stmt":
                self.statement_no += 1
                statement = self._statement(element)
                yield statement
                for _ in statement.lines:  # lines the reader did not want are still read (and checked)
                    pass
        if not seen_document:
            root = self.events.root
            if root is None:
                raise StatementMalformed("document", "no XML element found")
            _refuse_dtd(root)  # a DOCTYPE is refused as such; any other root is not camt.053
            raise StatementInvalid("Document", _ROOT, line=root.sourceline)
        if not self.statement_no:
            raise StatementInvalid("BkToCstmrStmt", "the document holds no Stmt")

    def _check_document(self, root: Any) -> None:
        _refuse_dtd(root)
        namespace = etree.QName(root).namespace or ""
        if not CAMT053_NAMESPACE.match(namespace):
            raise StatementInvalid(
                "Document",
                f"namespace {namespace or '(none)'!r} is not camt.053 (urn:iso:std:iso:20022:tech:xsd:camt.053.001.NN)",
                line=root.sourceline,
            )
        self.ns = namespace
        self._tags = {name: f"{{{namespace}}}{name}" for name in _ENTRY_NAMES}

    def _statement(self, stmt: Any) -> ParsedStatement:
        where = f"Stmt[{self.statement_no}]"
        first: Any = None  # the first Ntry, read before the header can be (balances come before entries)
        while (event := self._next()) is not None:
            kind, element = event
            if kind == "end" and element.tag == self._q("Ntry"):
                first = element
                break
            if kind == "end" and element.tag == self._q("Stmt"):
                break
        else:
            raise StatementMalformed(where, "the document ends inside a statement")
        header = self._header(stmt, where)
        return ParsedStatement(header, self._lines(stmt, header, first))

    def _lines(self, stmt: Any, header: Header, first: Any) -> Iterator[Line]:
        element, number = first, 0
        entry_tag, statement_tag = self._q("Ntry"), self._q("Stmt")
        while element is not None:
            number += 1
            yield self._entry(element, header, f"{header.where}/Ntry[{number}]")
            _drop(element)
            element = None
            while (event := self._next()) is not None:
                kind, found = event
                if kind == "end" and found.tag == entry_tag:
                    element = found
                    break
                if kind == "end" and found.tag == statement_tag:
                    break
            else:
                raise StatementMalformed(header.where, "the document ends inside a statement")
        _drop(stmt)

    # -- header -----------------------------------------------------------------------------------------------

    def _header(self, stmt: Any, where: str) -> Header:
        q = self._q
        account_element = stmt.find(q("Acct"))
        if account_element is None:
            raise StatementInvalid(f"{where}/Acct", "missing", line=stmt.sourceline)
        account = _text(account_element.find(f"{q('Id')}/{q('Othr')}/{q('Id')}")) or _text(
            account_element.find(f"{q('Id')}/{q('IBAN')}")
        )
        if not account:
            raise StatementInvalid(
                f"{where}/Acct/Id", "needs Othr/Id (the account number) or IBAN", line=stmt.sourceline
            )
        currency = _text(account_element.find(q("Ccy")))
        if currency not in (None, "CNY"):
            raise StatementInvalid(f"{where}/Acct/Ccy", f"{currency} is not CNY", line=account_element.sourceline)
        balances: dict[str, tuple[int, date | None]] = {}
        for n, balance in enumerate(stmt.iterfind(q("Bal")), start=1):
            here = f"{where}/Bal[{n}]"
            code = _text(balance.find(f"{q('Tp')}/{q('CdOrPrtry')}/{q('Cd')}"))
            if code not in (*OPENING_CODES, CLOSING_CODE):
                continue  # available and forward balances are not checked
            if code in balances:
                raise StatementInvalid(f"{here}/Tp", f"a second {code} balance", line=balance.sourceline)
            amount = self._amount(balance.find(q("Amt")), f"{here}/Amt", positive=False)
            sign = self._direction(balance.find(q("CdtDbtInd")), f"{here}/CdtDbtInd")
            balances[code] = (amount if sign == "credit" else -amount, self._date(balance.find(q("Dt")), None))
        opening_code = next((code for code in OPENING_CODES if code in balances), None)
        if opening_code is None:
            raise StatementInvalid(f"{where}/Bal", "needs an opening balance (OPBD or PRCD)", line=stmt.sourceline)
        if CLOSING_CODE not in balances:
            raise StatementInvalid(f"{where}/Bal", "needs a closing booked balance (CLBD)", line=stmt.sourceline)
        closing, closing_date = balances[CLOSING_CODE]
        business_date = closing_date or self._date(stmt.find(f"{q('FrToDt')}/{q('ToDtTm')}"), None, datetime_only=True)
        if business_date is None:
            raise StatementInvalid(f"{where}/Bal", "the CLBD balance needs its date (Dt/Dt)", line=stmt.sourceline)
        return Header(
            "camt053",
            account,
            business_date,
            balances[opening_code][0],
            closing,
            _text(stmt.find(q("Id"))),
            self.message_id,
            where,
        )

    # -- entries ----------------------------------------------------------------------------------------------

    def _entry(self, entry: Any, header: Header, where: str) -> Line:
        t = self._tags.__getitem__
        fields = {child.tag: child for child in entry}
        get = fields.get
        amount = self._amount(get(t("Amt")), where, "Amt")
        direction = self._direction(get(t("CdtDbtInd")), where, "CdtDbtInd")
        status = get(t("Sts"))
        status_code = _text(status.find(t("Cd"))) if status is not None and len(status) else _text(status)
        if status_code != "BOOK":
            raise StatementInvalid(
                f"{where}/Sts",
                f"is {status_code or 'missing'}: an end-of-day statement holds booked entries (BOOK)",
                line=entry.sourceline,
            )
        booked = self._date(get(t("BookgDt")), where, "BookgDt")
        valued = self._date(get(t("ValDt")), where, "ValDt")
        assert booked is not None and valued is not None
        if booked > header.business_date:
            check_booking_date(booked, header, f"{where}/BookgDt", entry.sourceline)
        bank_reference = _text(get(t("AcctSvcrRef")))
        ours: str | None = None
        texts = [_text(get(t("AddtlNtryInf")))]
        details = get(t("NtryDtls"))
        if details is not None:
            transactions = details.findall(t("TxDtls"))
            if len(transactions) > 1:
                raise StatementInvalid(
                    f"{where}/NtryDtls",
                    "a batch booking (more than one TxDtls) is refused: one entry per payment",
                    line=entry.sourceline,
                )
            if transactions:
                refs = transactions[0].find(t("Refs"))
                if refs is not None:
                    bank_reference = bank_reference or _text(refs.find(t("AcctSvcrRef")))
                    for name in ("EndToEndId", "InstrId"):
                        quoted = _text(refs.find(t(name)))
                        if quoted and quoted != _NOT_PROVIDED:
                            ours = quoted
                            break
                remittance = transactions[0].find(t("RmtInf"))
                if remittance is not None:
                    ours = ours or _text(remittance.find(f"{t('Strd')}/{t('CdtrRefInf')}/{t('Ref')}"))
                    texts += [_text(u) for u in remittance.iterfind(t("Ustrd"))]
        bank_reference = bank_reference or _text(get(t("NtryRef")))
        if not bank_reference:
            raise StatementInvalid(f"{where}/AcctSvcrRef", "the bank's reference is missing", line=entry.sourceline)
        if len(bank_reference) > 100:
            _too_long(f"{where}/AcctSvcrRef", entry.sourceline)
        if ours is not None and len(ours) > 100:
            _too_long(f"{where}/NtryDtls/TxDtls/Refs/EndToEndId", entry.sourceline)
        text = " ".join(x for x in texts if x)[:500] or None
        return Line(bank_reference, ours, direction, amount, valued, booked, text)

    def _amount(self, element: Any, where: str, name: str | None = None, *, positive: bool = True) -> int:
        if element is None:
            raise StatementInvalid(_at(where, name), "missing")
        currency = element.get("Ccy")
        if currency != "CNY":
            raise StatementInvalid(
                _at(where, name), f"currency {currency or '(none)'} is not CNY", line=element.sourceline
            )
        raw = (element.text or "").strip()
        if not _AMOUNT.match(raw):
            raise StatementInvalid(
                _at(where, name),
                f"{raw!r} is not an amount in yuan with at most 2 decimals (fen)",
                line=element.sourceline,
            )
        fen = int(Decimal(raw).scaleb(2))
        if positive and fen == 0:
            raise StatementInvalid(_at(where, name), "a booking of 0 is refused", line=element.sourceline)
        return fen

    def _direction(self, element: Any, where: str, name: str | None = None) -> Literal["credit", "debit"]:
        code = _text(element)
        if code == "CRDT":
            return "credit"
        if code == "DBIT":
            return "debit"
        line = element.sourceline if element is not None else None
        raise StatementInvalid(_at(where, name), f"{code or 'missing'}: must be CRDT or DBIT", line=line)

    def _date(
        self, element: Any, where: str | None, name: str | None = None, *, datetime_only: bool = False
    ) -> date | None:
        """``<X><Dt>YYYY-MM-DD</Dt></X>`` or ``<X><DtTm>…</DtTm></X>`` (a business date in the business time zone)."""
        if element is None:
            if where is None:
                return None
            raise StatementInvalid(_at(where, name), "missing")
        day, moment = (None, element) if datetime_only else (element.find(self._q("Dt")), None)
        if day is None and not datetime_only:
            moment = element.find(self._q("DtTm"))
        try:
            if day is not None:
                return date.fromisoformat((day.text or "").strip())
            if moment is not None:
                stamp = datetime.fromisoformat((moment.text or "").strip())
                return (stamp.astimezone(self.zone) if stamp.tzinfo else stamp).date()
        except ValueError as exc:
            raise StatementInvalid(
                _at(where or "", name) or "Dt", f"not an ISO date: {exc}", line=element.sourceline
            ) from exc
        if where is None:
            return None
        raise StatementInvalid(_at(where, name), "needs Dt or DtTm", line=element.sourceline)


def _refuse_dtd(root: Any) -> None:
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise StatementUnsafe(
            "document", "a DOCTYPE (DTD, entity declarations) is refused: camt.053 documents have none", line=1
        )


def _at(where: str, name: str | None) -> str:
    return f"{where}/{name}" if name else where


def _too_long(where: str, line: int | None) -> None:
    raise StatementInvalid(where, "longer than 100 characters", line=line)


def _text(element: Any) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _drop(element: Any) -> None:
    """Free what has been read: the element's content and the siblings before it."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


# --- writing camt.053 (examples, tests, the benchmark) --------------------------------------------------------

CAMT053_WRITTEN = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"


def _yuan(fen: int) -> str:
    return f"{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def camt053_head(message_id: str = "MSG1") -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="{CAMT053_WRITTEN}"><BkToCstmrStmt>'
        f"<GrpHdr><MsgId>{_escape(message_id)}</MsgId><CreDtTm>{datetime.now(UTC).isoformat()}</CreDtTm></GrpHdr>\n"
    )


def camt053_statement_head(header: Header) -> str:
    """``Header.account`` goes into Acct/Id/Othr/Id; ``bank_statement_id`` into Stmt/Id."""
    day = header.business_date.isoformat()
    balances = "".join(
        f'<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy="CNY">{_yuan(fen)}</Amt>'
        f"<CdtDbtInd>{'CRDT' if fen >= 0 else 'DBIT'}</CdtDbtInd><Dt><Dt>{day}</Dt></Dt></Bal>"
        for code, fen in (("OPBD", header.opening), ("CLBD", header.closing))
    )
    return (
        f"<Stmt><Id>{_escape(header.bank_statement_id or day)}</Id><CreDtTm>{day}T23:59:00+08:00</CreDtTm>"
        f"<Acct><Id><Othr><Id>{_escape(header.account)}</Id></Othr></Id><Ccy>CNY</Ccy></Acct>{balances}\n"
    )


def camt053_entry(line: Line) -> str:
    refs = f"<EndToEndId>{_escape(line.end_to_end_id)}</EndToEndId>" if line.end_to_end_id else ""
    remittance = f"<RmtInf><Ustrd>{_escape(line.text)}</Ustrd></RmtInf>" if line.text else ""
    details = ""
    if refs or remittance:
        details = f"<NtryDtls><TxDtls><Refs>{refs}</Refs>{remittance}</TxDtls></NtryDtls>"
    return (
        f'<Ntry><Amt Ccy="CNY">{_yuan(line.amount)}</Amt>'
        f"<CdtDbtInd>{'CRDT' if line.direction == 'credit' else 'DBIT'}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>"
        f"<BookgDt><Dt>{line.booking_date.isoformat()}</Dt></BookgDt>"
        f"<ValDt><Dt>{line.value_date.isoformat()}</Dt></ValDt>"
        f"<AcctSvcrRef>{_escape(line.bank_transaction_id)}</AcctSvcrRef>{details}</Ntry>\n"
    )


CAMT053_STATEMENT_END = "</Stmt>\n"
CAMT053_END = "</BkToCstmrStmt></Document>\n"


def camt053_chunks(statements: Iterable[tuple[Header, Iterable[Line]]], message_id: str = "MSG1") -> Iterator[str]:
    """A camt.053.001.08 document of the given statements, as text chunks (write them to a file or join them)."""
    yield camt053_head(message_id)
    for header, lines in statements:
        yield camt053_statement_head(header)
        for line in lines:
            yield camt053_entry(line)
        yield CAMT053_STATEMENT_END
    yield CAMT053_END
