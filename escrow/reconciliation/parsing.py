"""The two statement formats read into one shape: a header, then its lines as a stream.

JSON statements are validated by their pydantic model (``schemas.StatementIn``, published as a JSON Schema).
ISO 20022 camt.053 documents (one or many ``Stmt`` per file) are read with lxml's pull parser — entities are
never resolved, no network and no DTD are loaded, and a document whose prolog declares a DOCTYPE (or anything
with ``<!``) is refused from its raw bytes, in its encoding, before libxml2 parses any of it — one ``Ntry`` at a
time. Between two chunks of input, whatever the reader won't use is deleted along the path of open elements
(``_KEPT``), and each entry and statement is freed once read, so memory stays bounded whatever the document holds.
Amounts are parsed with ``Decimal`` into exact fen: up to five decimals as ISO 20022 allows, but a non-zero digit
below the fen, a currency other than CNY or a zero amount is refused, naming the element and its line.
"""

import codecs
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
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
_AMOUNT = re.compile(r"^[0-9]{1,13}(\.[0-9]{1,5})?$")  # ISO 20022 amounts: at most 5 fraction digits
_NOT_PROVIDED = "NOTPROVIDED"  # what banks put in EndToEndId when the payer gave none
_ENTRY_NAMES = (
    *("Amt", "CdtDbtInd", "Sts", "Cd", "BookgDt", "ValDt", "Dt", "DtTm", "AcctSvcrRef", "AddtlNtryInf", "NtryDtls"),
    *("TxDtls", "Refs", "EndToEndId", "InstrId", "RmtInf", "Strd", "CdtrRefInf", "Ref", "Ustrd", "NtryRef", "Ntry"),
    *("TxId", "MsgId", "PmtInfId", "AmtDtls", "TxAmt", "InstdAmt"),
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
    lines: Iterator[Line] | AsyncIterator[Line]  # a stream: read it to the end before asking for the next statement


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
    if isinstance(source, str):
        return _from_path(source, ZoneInfo(timezone))
    return _Camt053(source, ZoneInfo(timezone)).statements()


def _from_path(path: str, zone: ZoneInfo) -> Iterator[ParsedStatement]:
    with open(path, "rb") as stream:
        yield from _Camt053(stream, zone).statements()


# --- the prolog, read before libxml2 sees a byte --------------------------------------------------------------

PROLOG_MAX_BYTES = 64 * 1024  # what may come before the root element (declaration, comments, PIs)
_DECLARED = re.compile(r"""^\ufeff?<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]*)["']""")
_MARKUP = "<?!->[]\"'= /:abcxyzABCXYZDOCTYPENTIL\t\r\n"  # an encoding that keeps these as ASCII bytes
_XML_SPACE = " \t\r\n"


def _prolog_codec(head: bytes) -> str:
    """The codec of the document's first bytes (XML 1.0 appendix F), or the one it declares if ASCII-compatible."""
    if head.startswith((codecs.BOM_UTF32_LE, b"<\0\0\0")):
        return "utf-32-le"
    if head.startswith((codecs.BOM_UTF32_BE, b"\0\0\0<")):
        return "utf-32-be"
    if head.startswith((codecs.BOM_UTF16_LE, b"<\0?\0")):
        return "utf-16-le"
    if head.startswith((codecs.BOM_UTF16_BE, b"\0<\0?")):
        return "utf-16-be"
    # EBCDIC, or one char per byte: the ASCII-compatible family, until the declaration says which
    base = "cp037" if head.startswith(b"\x4c\x6f\xa7\x94") else "latin-1"
    declared = _DECLARED.match(head[:512].decode(base, errors="replace"))
    if declared is None:
        return "utf-8" if base == "latin-1" else base
    name = declared.group(1)
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise StatementInvalid("document", f"the encoding {name!r} is not supported: send UTF-8", line=1) from None
    if base == "latin-1" and _MARKUP.encode(codec, errors="replace") != _MARKUP.encode():
        raise StatementInvalid("document", f"the encoding {name!r} is not supported: send UTF-8", line=1)
    return codec


def _check_prolog(head: bytes, final: bool) -> bool:
    """Whether the prolog has been read up to the root element's name (``False``: need more bytes).

    Refuses a DOCTYPE (or any other ``<!`` declaration), whatever precedes it — an XML declaration, a BOM,
    whitespace, comments, processing instructions — in whatever encoding, before libxml2 parses anything, so the
    refusal does not depend on how a libxml2 version reacts to entities; and a root other than ``Document``."""
    text = codecs.getincrementaldecoder(_prolog_codec(head))(errors="replace").decode(head, final=final)
    at = 1 if text.startswith("\ufeff") else 0

    def line() -> int:
        return text.count("\n", 0, at) + 1

    while True:
        while at < len(text) and text[at] in _XML_SPACE:
            at += 1
        rest = text[at : at + 4]
        if rest.startswith("<?"):
            end = text.find("?>", at + 2)
            if end < 0:
                break
            at = end + 2
        elif rest.startswith("<!--"):
            end = text.find("-->", at + 4)
            if end < 0:
                break
            at = end + 3
        elif rest.startswith("<!") and not "<!--".startswith(rest):
            raise StatementUnsafe(
                "document",
                "a DOCTYPE (DTD, entity declarations) is refused: camt.053 documents have none",
                line=line(),
            )
        elif rest.startswith("<") and rest[1:2] not in ("", "!", "?"):
            name = re.match(r"<([^\s/>]*)[\s/>]", text[at : at + 256])
            if name is None and len(text) - at < 256 and not final:
                break
            if name is None or name.group(1).rpartition(":")[2] != "Document":
                raise StatementInvalid("Document", _ROOT, line=line())
            return True
        elif rest and not "<!--".startswith(rest):
            raise StatementMalformed(
                "document", f"not well-formed XML at line {line()}: content before the root element", line=line()
            )
        else:
            break
    if final:
        raise StatementMalformed("document", "no XML element found", line=line())
    return False


class _Prefixed:
    """A binary stream with its first bytes read already (the prolog), served again first."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.rest.read(size)


def _checked(source: IO[bytes]) -> _Prefixed:
    head = b""
    while True:
        chunk = source.read(_CHUNK)
        head += chunk
        if _check_prolog(head, final=not chunk):
            return _Prefixed(head, source)
        if len(head) > PROLOG_MAX_BYTES:
            raise StatementInvalid(
                "document", f"more than {PROLOG_MAX_BYTES} bytes before the root element Document", line=1
            )


# --- what the reader keeps of the tree ------------------------------------------------------------------------

# The elements the reader uses, by their parents, from Document down (``None``: kept whole). Everything else is
# deleted as the document is read — between two chunks, every completed child that is not listed here, at each
# level of the path of open elements (a skipped subtree is emptied as it grows) — so what a document holds
# beside its entries costs no memory, whatever its size.
_TXDTLS: dict[str, Any] = {
    "Refs": None,
    "Amt": None,
    "AmtDtls": None,
    "CdtDbtInd": None,
    "RmtInf": {"Ustrd": None, "Strd": {"CdtrRefInf": {"Ref": None}}},
}
_NTRY: dict[str, Any] = {
    **dict.fromkeys(("Amt", "CdtDbtInd", "Sts", "BookgDt", "ValDt", "AcctSvcrRef", "AddtlNtryInf", "NtryRef")),
    "NtryDtls": {"TxDtls": _TXDTLS},
}
_KEPT: dict[str, Any] = {
    "BkToCstmrStmt": {
        "GrpHdr": {"MsgId": None},
        "Stmt": {
            "Id": None,
            "Acct": {"Id": {"Othr": {"Id": None}, "IBAN": None}, "Ccy": None},
            "Bal": {"Tp": {"CdOrPrtry": {"Cd": None}}, "Amt": None, "CdtDbtInd": None, "Dt": None},
            "FrToDt": {"ToDtTm": None},
            "Ntry": _NTRY,
        },
    }
}
_CHUNK = 64 * 1024


def _qualified(spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {f"{{{namespace}}}{k}": None if v is None else _qualified(v, namespace) for k, v in spec.items()}


def _prune(node: Any, spec: dict[str, Any]) -> None:
    """Delete what the reader won't use along the path of open elements (the last child at each level)."""
    while node is not None:
        count = len(node)
        if not count:
            return
        if count > 1:
            if spec:
                for child in node[: count - 1]:
                    if child.tag not in spec:
                        node.remove(child)
            else:
                del node[: count - 1]
        last = node[-1]
        if spec and last.tag in spec:
            spec = spec[last.tag]
            if spec is None:
                return
        else:
            spec = {}
        node = last


class _Camt053:
    def __init__(self, source: IO[bytes], zone: ZoneInfo) -> None:
        self.zone = zone
        self.source: Any = source
        self.parser = etree.XMLPullParser(
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
        self.pending: deque[tuple[str, Any]] = deque()
        self.ended = False
        self.root: Any = None
        self.document: Any = None
        self.kept: dict[str, Any] = {}
        self.ns = ""
        self._tags: dict[str, str] = {}
        self.message_id: str | None = None
        self.statement_no = 0

    def _next(self) -> tuple[str, Any] | None:
        try:
            while not self.pending:
                if self.ended:
                    return None
                if self.document is None and self.root is None and not isinstance(self.source, _Prefixed):
                    self.source = _checked(self.source)
                if self.document is not None:
                    _prune(self.document, self.kept)
                data = self.source.read(_CHUNK)
                if data:
                    self.parser.feed(data)
                else:
                    self.ended = True
                    self.root = self.parser.close()
                self.pending.extend(self.parser.read_events())
            return self.pending.popleft()
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
            root = self.root
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
        self.document, self.kept = root, _qualified(_KEPT, namespace)

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
            yield from self._entry(element, header, f"{header.where}/Ntry[{number}]")
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

    def _entry(self, entry: Any, header: Header, where: str) -> list[Line]:
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
        transactions = [tx for details in entry.iterfind(t("NtryDtls")) for tx in details.iterfind(t("TxDtls"))]
        texts = [_text(get(t("AddtlNtryInf")))]
        own = [_text(get(t("AcctSvcrRef"))), _text(get(t("NtryRef")))]  # the entry's own references, if any

        def line(fen: int, bank_reference: str | None, ours: str | None, more: list[str | None]) -> Line:
            if not bank_reference:
                raise StatementInvalid(
                    f"{where}/AcctSvcrRef",
                    "the entry carries no reference: AcctSvcrRef, NtryRef, or in NtryDtls/TxDtls/Refs one of "
                    "AcctSvcrRef, TxId, EndToEndId, InstrId, MsgId, PmtInfId",
                    line=entry.sourceline,
                )
            if len(bank_reference) > 100:
                _too_long(f"{where}/AcctSvcrRef", entry.sourceline)
            if ours is not None and len(ours) > 100:
                _too_long(f"{where}/NtryDtls/TxDtls/Refs/EndToEndId", entry.sourceline)
            text = " ".join(x for x in texts + more if x)[:500] or None
            return Line(bank_reference, ours, direction, fen, valued, booked, text)

        if len(transactions) <= 1:
            bank, ours, ids, more = self._references(transactions[0] if transactions else None)
            return [line(amount, _first(own[:1] + bank[:1] + own[1:] + bank[1:] + [ours] + ids), ours, more)]
        # A batch booking: one line per transaction when each carries its amount (CNY, the entry's direction) and
        # they add up to the entry's; otherwise the entry is one line with its own reference (matched by it, or by
        # amount and date), since no single end-to-end reference stands for all its payments.
        amounts = [
            self._transaction_amount(tx, direction, f"{where}/NtryDtls/TxDtls[{n}]")
            for n, tx in enumerate(transactions, start=1)
        ]
        if any(fen is None for fen in amounts):
            found = [self._references(tx) for tx in transactions]
            bank_reference = _first(own + [ref for f in found for ref in f[0] + f[2]])
            return [line(amount, bank_reference, None, [f"batch of {len(transactions)} transactions"])]
        total = sum(fen for fen in amounts if fen is not None)
        if total != amount:
            raise StatementInvalid(
                f"{where}/NtryDtls",
                f"the amounts of its {len(transactions)} TxDtls add up to {total} fen, not the entry's {amount} fen",
                line=entry.sourceline,
            )
        lines = []
        for n, (tx, fen) in enumerate(zip(transactions, amounts, strict=True), start=1):
            bank, ours, ids, more = self._references(tx)
            numbered = [f"{ref}/{n}" for ref in own if ref]  # the entry's reference, one per transaction
            lines.append(line(fen or 0, _first(bank + numbered + [ours] + ids), ours, more))
        return lines

    def _references(self, tx: Any) -> tuple[list[str | None], str | None, list[str | None], list[str | None]]:
        """A TxDtls's references: the bank's (AcctSvcrRef, TxId), ours (EndToEndId unless NOTPROVIDED, InstrId,
        else the creditor reference), other identifiers (MsgId, PmtInfId), and its unstructured remittance text."""
        if tx is None:
            return [], None, [], []
        t = self._tags.__getitem__
        refs = tx.find(t("Refs"))
        bank: list[str | None] = []
        ids: list[str | None] = []
        ours: str | None = None
        if refs is not None:
            bank = [_text(refs.find(t("AcctSvcrRef"))), _text(refs.find(t("TxId")))]
            ids = [_text(refs.find(t("MsgId"))), _text(refs.find(t("PmtInfId")))]
            for name in ("EndToEndId", "InstrId"):
                quoted = _text(refs.find(t(name)))
                if quoted and quoted != _NOT_PROVIDED:
                    ours = quoted
                    break
        more: list[str | None] = []
        remittance = tx.find(t("RmtInf"))
        if remittance is not None:
            ours = ours or _text(remittance.find(f"{t('Strd')}/{t('CdtrRefInf')}/{t('Ref')}"))
            more = [_text(u) for u in remittance.iterfind(t("Ustrd"))]
        return bank, ours, ids, more

    def _transaction_amount(self, tx: Any, direction: str, where: str) -> int | None:
        """A batch transaction's amount in fen (``Amt``, else ``AmtDtls/TxAmt/Amt``), or ``None`` when it gives
        none in CNY, or gives another direction."""
        t = self._tags.__getitem__
        if _text(tx.find(t("CdtDbtInd"))) not in (None, {"credit": "CRDT", "debit": "DBIT"}[direction]):
            return None
        for path in (t("Amt"), f"{t('AmtDtls')}/{t('TxAmt')}/{t('Amt')}"):
            element = tx.find(path)
            if element is not None and element.get("Ccy") == "CNY":
                return self._amount(element, where, "Amt", positive=False) or None
        return None

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
                f"{raw!r} is not an amount in yuan (digits, at most 5 decimals)",
                line=element.sourceline,
            )
        exact = Decimal(raw).scaleb(2)
        if exact != exact.to_integral_value():
            raise StatementInvalid(
                _at(where, name),
                f"{raw!r} is not a whole number of fen (a non-zero digit below the fen)",
                line=element.sourceline,
            )
        fen = int(exact)
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


def _first(values: list[str | None]) -> str | None:
    return next((v for v in values if v), None)


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
