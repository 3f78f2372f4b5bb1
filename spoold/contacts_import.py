"""Reading contacts from a CSV file: ``spoold contacts import FILE.csv``.

The first row names the columns: ``email`` (required), ``name`` (optional),
and every other column is an attribute (names of letters, digits and ``_``,
so that templates and --where filters can name them).  The file is UTF-8,
with or without a byte-order mark, comma-separated with "quoted" fields
as RFC 4180 has it.

Each data row becomes a ContactIn (the address normalised by
spoold.address.parse_address); an empty cell leaves that attribute as it
was.  A name or an attribute may hold line breaks and tabs (an address
block), no other control character.  A row that cannot be
one (bad or missing address, wrong number of fields, bytes that are not
UTF-8, a control character such as NUL, a field over 128 KiB) is reported
as ``line N: reason``, N the row's first line, and the good rows still go
in, in chunks of ``CHUNK`` per transaction
(Store.upsert_contacts: a re-import updates, never duplicates).  With
``strict`` the whole file is checked first and refused, every bad line
listed, before anything is written.  On a terminal, files over 1 MB show a
tqdm progress bar on stderr.  The web UI's upload comes here too, as an
open file; ``parse_attributes`` reads the NAME=VALUE attributes that
``spoold contacts add`` and the UI's contact form take.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from spoold.address import parse_address
from spoold.errors import AddressError, ContactsFileError, SpooldError
from spoold.store import Store
from spoold.store.contacts import ContactIn

CHUNK = 5000
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SURROGATE = re.compile("[\udc80-\udcff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but \t \n \r
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_REASON = 200  # characters of a bad value quoted in a reason
_BAR_FROM = 1 << 20


@dataclass
class ImportReport:
    inserted: int = 0
    updated: int = 0
    bad: list[str] = field(default_factory=list)  # "line N: reason"


class _Columns:
    """The header row: which column is the address, the name, each attribute."""

    def __init__(self, header: list[str], path: str):
        names = [h.strip() for h in header]
        lowered = [n.lower() for n in names]
        if "email" not in lowered:
            raise ContactsFileError(f"{path}: line 1: no 'email' column in the header")
        seen: set[str] = set()
        for name in lowered:
            if name in seen:
                raise ContactsFileError(f"{path}: line 1: column {name!r} appears twice")
            seen.add(name)
        self.names = names
        self.width = len(names)
        self.email = lowered.index("email")
        self.name = lowered.index("name") if "name" in lowered else None
        self.attributes = [(i, n) for i, n in enumerate(names)
                           if i not in (self.email, self.name)]
        for _, name in self.attributes:
            if not _ATTRIBUTE.match(name):
                raise ContactsFileError(f"{path}: line 1: column {name!r} is not a usable "
                                        "attribute name (letters, digits and _ only)")

    def contact(self, row: list[str]) -> ContactIn:
        """The row as a contact, or ValueError/AddressError saying why not."""
        if len(row) != self.width:
            raise ValueError(f"{len(row)} fields where the header has {self.width}")
        if any(_SURROGATE.search(cell) for cell in row):
            raise ValueError("not UTF-8 text")
        email = row[self.email].strip()
        if not email:
            raise ValueError("no email address")
        for i, column in enumerate(self.names):
            found = _CONTROL.search(row[i])
            if found:
                raise ValueError(f"control character {found.group()!r} in column {column!r}")
        return ContactIn(email=parse_address(email),
                         name=None if self.name is None else row[self.name].strip(),
                         attributes={n: row[i] for i, n in self.attributes if row[i] != ""})


def parse_attributes(pairs: Iterable[str]) -> dict[str, str]:
    """Attributes from "NAME=VALUE" entries (``contacts add --attr``, the web UI's form);
    names as in a file's header, blank entries skipped."""
    attributes = {}
    for pair in pairs:
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _ATTRIBUTE.match(key):
            raise SpooldError(f"attribute {pair.strip()[:60]!r}: use NAME=VALUE, the name of "
                              "letters, digits and _")
        attributes[key] = value.strip()
    return attributes


def _short(reason: str) -> str:
    return reason if len(reason) <= _REASON else reason[:_REASON] + "..."


def _rows(raw: BinaryIO, name: str, show: bool) -> Iterator[tuple[int, ContactIn | str]]:
    """(line number, contact or reason) for every data row of the file, read from the
    start; ``raw`` stays open."""
    raw.seek(0, io.SEEK_END)
    size = raw.tell()
    raw.seek(0)
    if raw.read(2) in _UTF16_BOMS:
        raise ContactsFileError(f"{name}: line 1: the file is UTF-16 text; save it as UTF-8")
    raw.seek(0)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=Path(name).name, file=sys.stderr,
               disable=not (show and size >= _BAR_FROM and sys.stderr.isatty()))
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise ContactsFileError(f"{name}: the file is empty") from None
        except csv.Error as exc:
            raise ContactsFileError(f"{name}: line 1: {exc}") from None
        columns = _Columns(header, name)
        while True:
            first = reader.line_num + 1  # a quoted field may span lines: name the first
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield first, _short(str(exc))
                continue
            if reader.line_num % 10000 == 0:
                bar.update(raw.tell() - bar.n)
            if not any(cell.strip() for cell in row):
                continue
            try:
                yield first, columns.contact(row)
            except (ValueError, AddressError) as exc:
                yield first, _short(str(exc))
        bar.update(size - bar.n)
    finally:
        bar.close()
        text.detach()  # the caller's file: closing the wrapper would close it


@contextmanager
def _opened(source: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if not isinstance(source, (str, Path)):
        yield source
        return
    try:
        raw = open(source, "rb")
    except OSError as exc:
        raise ContactsFileError(f"{source}: {exc.strerror}") from None
    with raw:
        yield raw


def import_contacts(store: Store, source: str | Path | BinaryIO, list_name: str | None = None,
                    strict: bool = False, show_progress: bool = True,
                    name: str | None = None) -> ImportReport:
    """Import a CSV file of contacts; see the module's description.

    ``source`` is a path or a seekable binary file (an upload); errors name it
    as ``name`` (default: the path).
    """
    name = name or str(source)
    report = ImportReport()
    with _opened(source) as raw:
        if strict:
            bad = [f"line {line}: {item}" for line, item in _rows(raw, name, show_progress)
                   if isinstance(item, str)]
            if bad:
                raise ContactsFileError(f"{name}: {len(bad)} bad line{'s' * (len(bad) != 1)}, "
                                        "nothing imported:\n  " + "\n  ".join(bad))
        batch: list[ContactIn] = []
        for line, item in _rows(raw, name, show_progress):
            if isinstance(item, str):
                report.bad.append(f"line {line}: {item}")
                continue
            batch.append(item)
            if len(batch) >= CHUNK:
                _write(store, batch, list_name, report)
        _write(store, batch, list_name, report)
    return report


def _write(store: Store, batch: list[ContactIn], list_name: str | None,
           report: ImportReport) -> None:
    if batch:
        counts = store.upsert_contacts(batch, list_name)
        report.inserted += counts.inserted
        report.updated += counts.updated
        batch.clear()
