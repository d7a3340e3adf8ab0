"""Generate the SOP-class and transfer-syntax tables of the DICOM Conformance Statement.

The tables in ``docs/conformance-statement.md`` are the output of this script, pasted
between their ``<!-- BEGIN GENERATED: name -->`` / ``<!-- END GENERATED: name -->``
markers. They come from what the SCP actually offers, :mod:`dicom_scp.contexts`
(whose storage SOP classes are pynetdicom's storage classes,
``pynetdicom.sop_class._STORAGE_CLASSES`` / ``AllStoragePresentationContexts``), so
``tests/unit/deploy/test_conformance.py`` can hold the document to the code::

    python deploy/conformance_tables.py            # print every table
    python deploy/conformance_tables.py --write    # rewrite them in the document
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "conformance-statement.md"

_MARKER = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else "(unnamed)"


def _storage_keywords() -> dict[str, str]:
    """Map SOP Class UID -> pynetdicom keyword, from ``_STORAGE_CLASSES``."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    keywords: dict[str, str] = {}
    for keyword, uid in _STORAGE_CLASSES.items():
        keywords.setdefault(str(uid), keyword)
    return keywords


def storage_sop_class_table(uids: Iterable[str]) -> str:
    """The Storage SCP's SOP classes as a Markdown table.

    Parameters
    ----------
    uids : iterable of str
        SOP Class UIDs, in the order the SCP offers them.

    Returns
    -------
    str
        Markdown, one row per SOP class, ending with a newline.
    """
    keywords = _storage_keywords()
    lines = ["| # | SOP Class Name | SOP Class UID | SCU | SCP |", "|---:|---|---|:---:|:---:|"]
    for index, uid in enumerate(uids, start=1):
        name = _uid_name(uid)
        if name == "(unnamed)":
            name = keywords.get(uid, name)
        lines.append(f"| {index} | {name} | {uid} | No | Yes |")
    return "\n".join(lines) + "\n"


def transfer_syntax_table(uids: Iterable[str]) -> str:
    """Transfer syntaxes as a Markdown table.

    Parameters
    ----------
    uids : iterable of str
        Transfer Syntax UIDs, in order of preference.

    Returns
    -------
    str
        Markdown, ending with a newline.
    """
    lines = ["| Transfer Syntax Name | Transfer Syntax UID |", "|---|---|"]
    lines += [f"| {_uid_name(uid)} | {uid} |" for uid in uids]
    return "\n".join(lines) + "\n"


def generated_tables() -> dict[str, str]:
    """Every generated table of the document, by marker name.

    Returns
    -------
    dict of str to str
        ``storage-sop-classes``, ``storage-transfer-syntaxes`` and
        ``verification-transfer-syntaxes``.
    """
    from dicom_scp import contexts

    return {
        "storage-sop-classes": storage_sop_class_table(contexts.storage_sop_classes()),
        "storage-transfer-syntaxes": transfer_syntax_table(contexts.SUPPORTED_TRANSFER_SYNTAXES),
        "verification-transfer-syntaxes": transfer_syntax_table(
            contexts.VERIFICATION_TRANSFER_SYNTAXES
        ),
    }


def generated_sections(text: str) -> dict[str, str]:
    """The bodies between the generated-table markers of a document.

    Parameters
    ----------
    text : str
        The document.

    Returns
    -------
    dict of str to str
        Marker name -> body.
    """
    return {m["name"]: m["body"] for m in _MARKER.finditer(text)}


def replace_sections(text: str, tables: dict[str, str]) -> str:
    """Put ``tables`` between their markers in ``text``.

    Parameters
    ----------
    text : str
        The document.
    tables : dict of str to str
        Marker name -> new body.

    Returns
    -------
    str
        The document with the bodies replaced; unknown markers are left as they are.
    """

    def _swap(match: re.Match[str]) -> str:
        body = tables.get(match["name"], match["body"])
        return f"{match.group(1)}{body}{match.group(4)}"

    return _MARKER.sub(_swap, text)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables, or write them into the document.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOCUMENT.name}")
    args = parser.parse_args(argv)
    tables = generated_tables()
    if args.write:
        DOCUMENT.write_text(
            replace_sections(DOCUMENT.read_text(encoding="utf-8"), tables), encoding="utf-8"
        )
        return 0
    for name, body in tables.items():
        sys.stdout.write(f"<!-- {name} -->\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
