"""What a message in a sender's reply mailbox is (pure, no I/O): a person's reply, an
automatic answer (RFC 3834 and the headers and subjects mail systems really use), or a
report (DSN / ARF: the bounce path's). And what a reply shows: its first lines as plain
text, an out-of-office's return date, the one-line `detail` of its feedback event.

The event detail is `from=<address> date=<ISO time>[ returns_on=<YYYY-MM-DD>] | <first
lines>`; `returns_on_in(detail)` reads the date back (docs/replies.md).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime

SNIPPET_CHARS = 300
MAX_TEXT_CHARS = 20_000  # of a body looked at: a return date is in the first lines

# Reply prefixes in a few languages: Re, Aw (de), Sv (sv/da/no), Antw (nl), Réf/Rép (fr),
# Rif (it), Odp (pl), Ynt (tr), Vs (fi); "[EXT]"-style tags are dropped too.
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|antw|antwort|r[ée]f|r[ée]p|rif|odp|ynt|vs|res)"
    r"(?:\[\d+\]|\(\d+\))?\s*:|\[[^\]]{1,20}\])\s*",
    re.IGNORECASE,
)
# Subjects of automatic answers (out of office, vacation, "automatic reply"), several
# languages; matched at the subject's start, after reply prefixes.
_AUTO_SUBJECT = re.compile(
    r"^(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response|"
    r"answer)|autoreply|away from (?:the )?office|on vacation|vacation reply|"
    r"abwesenheit(?:snotiz)?|automatische antwort|nicht im b[üu]ro|"
    r"r[ée]ponse automatique|absence|absent du bureau|"
    r"respuesta autom[áa]tica|fuera de (?:la )?oficina|ausente|"
    r"risposta automatica|fuori (?:sede|ufficio)|"
    r"automatisch antwoord|afwezig|niet aanwezig|"
    r"resposta autom[áa]tica|fora do escrit[óo]rio|"
    r"autosvar|fr[åa]nvaro|automaattinen vastaus|poza biurem|odpowied[źz] automatyczna|"
    r"otomatik yan.t)"
    r"(?=\s*(?:[:(\-\u2013]|$))",  # a prefix ("Automatic reply: …"), not a word of a subject
    re.IGNORECASE,
)
_PRECEDENCE_AUTO = ("auto_reply", "bulk", "junk")
# "Out of office" words in a body (to tell an out-of-office from another auto-reply).
_OOO_WORDS = re.compile(
    r"out of (?:the )?office|on (?:vacation|holiday|leave)|away (?:from|until|till)|"
    r"abwesend|urlaub|absent|vacances|cong[ée]|vacaciones|ausente|ferie|vakantie|afwezig",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Classified:
    kind: str  # "reply", "auto_reply" or "report" (a DSN or ARF report)
    reason: str  # why, for the log: "Auto-Submitted: auto-replied", "subject", …


def normalize_subject(subject: str | None) -> str:
    """The subject without reply prefixes ("Re: AW: [EXT] Hello" → "hello"), casefolded."""
    text = " ".join((subject or "").split())
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            return text.casefold()
        text = stripped


def classify(message: Message) -> Classified:
    """A reply, an automatic answer, or a report, from its headers and subject."""
    content = message.get_content_type()
    if content == "multipart/report" or message.get("X-Failed-Recipients"):
        return Classified("report", "a delivery or feedback report")
    subject = normalize_subject(str(message.get("Subject", "")))
    submitted = str(message.get("Auto-Submitted", "")).split(";")[0].strip().lower()
    if submitted and submitted != "no":
        return Classified("auto_reply", f"Auto-Submitted: {submitted}")
    for header in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Response"):
        if message.get(header) is not None:
            return Classified("auto_reply", header)
    precedence = str(message.get("Precedence", "")).strip().lower()
    if precedence in _PRECEDENCE_AUTO:
        return Classified("auto_reply", f"Precedence: {precedence}")
    if _AUTO_SUBJECT.match(subject):
        return Classified("auto_reply", "an automatic answer's subject")
    if str(message.get("Return-Path", "")).strip() == "<>":
        return Classified("auto_reply", "a null return path")
    return Classified("reply", "a person's reply")


def is_out_of_office(message: Message, text: str) -> bool:
    subject = normalize_subject(str(message.get("Subject", "")))
    return bool(_AUTO_SUBJECT.match(subject) or _OOO_WORDS.search(text[:2000]))


def from_address(message: Message) -> str:
    """The author's bare address (lower case), or "" when it names none."""
    pairs = getaddresses([str(message.get("From", ""))])
    address = pairs[0][1] if pairs else ""
    return address.strip().lower() if "@" in address else ""


def sent_at(message: Message) -> datetime | None:
    """Its Date header, when it parses to an aware time."""
    try:
        value = parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo is not None else None


def referenced_ids(message: Message) -> list[str]:
    """The Message-IDs it answers: In-Reply-To first, then References from the newest."""
    found: list[str] = []
    for header in ("In-Reply-To", "References"):
        ids = re.findall(r"<[^<>\s]{1,250}>", str(message.get(header, "")))
        found.extend(ids if header == "In-Reply-To" else reversed(ids))
    return list(dict.fromkeys(found))[:20]


def plain_text(message: EmailMessage) -> str:
    """Its text: the text/plain part, else the HTML one without tags (at most 20,000 chars)."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # an unknown charset, a broken part
        return ""
    if not isinstance(content, str):
        return ""
    content = content[: MAX_TEXT_CHARS * 5]
    if part.get_content_type() == "text/html":
        content = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", content)
        content = html.unescape(re.sub(r"(?s)<br\s*/?>|</p>|</div>", "\n", content))
        content = re.sub(r"(?s)<[^>]*>", " ", content)
    return content[:MAX_TEXT_CHARS]


_QUOTE_START = re.compile(
    r"^(?:on .{0,200} wrote:|am .{0,200} schrieb .{0,200}:|le .{0,200} a [ée]crit\s*:|"
    r"el .{0,200} escribi[óo]:|-{2,}\s*original message\s*-{2,}|from:\s.*|_{10,})\s*$",
    re.IGNORECASE,
)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The reply's own first lines, one line: quoted text and signatures left out."""
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "--" or _QUOTE_START.match(stripped):
            break
        if stripped.startswith(">"):
            continue
        if stripped:
            kept.append(stripped)
        if sum(len(k) + 1 for k in kept) > limit:
            break
    joined = " ".join(" ".join(kept).split())
    return joined if len(joined) <= limit else joined[: limit - 1].rstrip() + "…"


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            "january jan januar janvier enero gennaio januari janeiro",
            "february feb februar février fevrier febrero febbraio februari fevereiro",
            "march mar märz maerz mars marzo maart março",
            "april apr avril abril aprile",
            "may mai mayo maggio mei maio",
            "june jun juni juin junio giugno junho",
            "july jul juli juillet julio luglio julho",
            "august aug août aout agosto augustus",
            "september sep sept septembre septiembre settembre setembro",
            "october oct oktober octobre octubre ottobre okt outubro",
            "november nov novembre noviembre novembro",
            "december dec dezember décembre decembre diciembre dicembre dez dezembro",
        ),
        start=1,
    )
    for name in names.split()
}
_MONTH = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
# A return date follows one of these words: "back on", "until", "bis", "jusqu'au", …
_KEYWORD = (
    r"(?:back|return(?:ing)?|returns|until|till|til|through|thru|bis(?: zum| einschließlich)?|"
    r"zur[üu]ck|jusqu'?(?:au|à)|de retour|retour|hasta(?: el)?|regreso|fino al?|"
    r"rientro|tot(?: en met)?|terug|at[ée](?: o dia)?|volto)"
)
_DATE_AFTER = re.compile(
    _KEYWORD + r"\b[^\n\d]{0,40}?(?:"
    r"(?P<iso>\d{4}-\d{2}-\d{2})|"
    r"(?P<d1>\d{1,2})\.\s?(?P<m1>\d{1,2})\.(?:\s?(?P<y1>\d{4}|\d{2})\b)?|"
    r"(?P<d2>\d{1,2})(?:st|nd|rd|th|er|º|\.)?\s+(?:de\s+)?(?P<mn2>" + _MONTH + r")\.?"
    r"(?:\s+(?:de\s+)?(?P<y2>\d{4}))?|"
    r"(?P<mn3>" + _MONTH + r")\.?\s+(?P<d3>\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(?P<y3>\d{4}))?"
    r")",
    re.IGNORECASE,
)


def return_date(text: str, received: date) -> date | None:
    """The date an out-of-office says its author is back ("back on 12 December", "until
    2026-12-12", "bis 12.12."), within a year of `received`; a date without a year is the
    next one from `received`. None when no such date is given."""
    for found in _DATE_AFTER.finditer(text[:4000]):
        value = _date_of(found, received)
        if value is not None and received - timedelta(days=1) <= value <= received + timedelta(
            days=366
        ):
            return value
    return None


def _date_of(found: re.Match[str], received: date) -> date | None:
    g = found.groupdict()
    try:
        if g["iso"]:
            return date.fromisoformat(g["iso"])
        if g["d1"]:
            day, month, year = int(g["d1"]), int(g["m1"]), g["y1"]
        elif g["d2"]:
            day, month, year = int(g["d2"]), _MONTHS[g["mn2"].lower()], g["y2"]
        else:
            day, month, year = int(g["d3"]), _MONTHS[g["mn3"].lower()], g["y3"]
        if year:
            return date(int(year) + (2000 if len(year) == 2 else 0), month, day)
        candidate = date(received.year, month, day)
        return candidate if candidate >= received else date(received.year + 1, month, day)
    except (ValueError, KeyError):
        return None


def detail_of(author: str, when: datetime, first_lines: str, returns_on: date | None = None) -> str:
    """The feedback event's one-line detail (the format `returns_on_in` reads)."""
    returns = f" returns_on={returns_on.isoformat()}" if returns_on else ""
    return f"from={author or '-'} date={when.isoformat()}{returns} | {first_lines}"


_RETURNS = re.compile(r"^from=\S+ date=\S+ returns_on=(\d{4}-\d{2}-\d{2}) \|")


def returns_on_in(detail: str) -> date | None:
    """An out-of-office event's return date, from its `detail` (None when it gave none)."""
    found = _RETURNS.match(detail)
    return date.fromisoformat(found.group(1)) if found else None
