"""Job store addresses: which ones name PostgreSQL, and how to show one without its password."""

from __future__ import annotations

import re

POSTGRES_SCHEMES: tuple[str, ...] = ("postgresql://", "postgres://")


def redact(address: str) -> str:
    """``address`` with any password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", address)
