"""Credentials kept out of everything uqflow shows: URLs and DSNs with their secrets masked, and the
secret values of the environment hidden in free text (an exception's message).

A URL's user part is everything between ``://`` and the *last* ``@`` of the text, so that a
password holding ``@ : / # ?`` (raw, as some parsers accept it, or percent-encoded, as it should
be) is masked whole; ``urllib.parse.urlsplit`` would end the host part at the first ``/ # ?`` and
show the rest of such a password. Where a path or query holds an ``@`` this may hide more than
the password (a host), never less. A query's credential keys (``?password=``, ``sslpassword``,
``token``, ``key``, ...) are masked too, each value up to the next ``&``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: a URL inside free text: a scheme and what follows it up to a space or a quote
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
#: query keys (lower case, '-' read as '_') whose value is a credential, whole or as a suffix after '_'
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "pass", "token", "secret", "key", "apikey", "sig",
                          "signature", "credential", "credentials", "auth", "authorization", "sslpassword",
                          "sslkey", "accesskey", "secretkey"})
_SECRET_SUFFIXES = ("_password", "_passwd", "_pwd", "_token", "_secret", "_key", "_signature", "_credential",
                    "_credentials")
#: environment variables whose value is a credential, by a word in the name, or by its end (API
#: keys: a served model's ``UQFLOW_API_KEY``, ``OPENAI_API_KEY``, ``AWS_SECRET_ACCESS_KEY``)
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "CREDENTIAL", "API_KEY", "APIKEY")
SECRET_ENDINGS = ("_KEY",)
SECRET_NAMES = ("HF_TOKEN",)
#: a known secret shorter than this is not searched for in free text (it would garble every message)
_SHORTEST = 4


def _split(url: str) -> tuple[str, str | None, str] | None:
    """(scheme with ``://``, the user part or None, the rest after its ``@``); None for text
    without a scheme (a path). No user part where the text after ``://`` starts with ``/``
    (``sqlite:///path``, ``file:///path``): that is a path, whatever it holds."""
    m = _SCHEME.match(url)
    if not m:
        return None
    scheme, rest = m.group(), url[m.end():]
    at = rest.rfind("@")
    if at < 0 or rest.startswith("/"):
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1:]


def _secret_key(key: str) -> bool:
    k = unquote(key).strip().lower().replace("-", "_")
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def _mask_query(text: str) -> str:
    """Every credential value of the query (after the first ``?``) as ``***``; a part without
    ``=`` right after a credential (a raw ``&`` inside it) is taken as part of it."""
    head, q, query = text.partition("?")
    if not q:
        return text
    parts, hiding = [], False
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        if eq:
            hiding = _secret_key(key)
            parts.append(f"{key}={MASK}" if hiding else part)
        elif not hiding:
            parts.append(part)
    return f"{head}?{'&'.join(parts)}"


def mask(url: str) -> str:
    """``url`` (a tracking URI, an SQLAlchemy URL or DSN) as it may be shown: the password of its
    user part and the values of its query's credential keys replaced by ``***``, the user name
    kept; text that is no URL (a path) unchanged.

    >>> mask("postgresql+psycopg://me:p/a#s?s@host:5432/db?sslpassword=x&sslmode=require")
    'postgresql+psycopg://me:***@host:5432/db?sslpassword=***&sslmode=require'
    """
    parts = _split(url)
    if parts is None:
        return url
    scheme, userinfo, rest = parts
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        userinfo = f"{user}:{MASK}" if colon and password else userinfo
    return _mask_query(scheme + (f"{userinfo}@" if userinfo is not None else "") + rest)


def holds_secret(value: str) -> bool:
    """Whether ``value`` is a URL that carries a credential (a password, a credential in its query)."""
    return mask(value) != value


def split_login(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user part, and that part's user name and password (percent-decoded, as
    an HTTP client sends them); the URL unchanged and None, None where it holds no password."""
    parts = _split(url)
    if parts is None or parts[1] is None:
        return url, None, None
    scheme, userinfo, rest = parts
    user, colon, password = userinfo.partition(":")
    if not (colon and password):
        return url, None, None
    return scheme + rest, unquote(user), unquote(password)


def user_of(url: str) -> str | None:
    """The user name of a URL's user part (percent-decoded), password or not; None without one."""
    parts = _split(url)
    if parts is None or not parts[1]:
        return None
    return unquote(parts[1].partition(":")[0]) or None


def site(url: str) -> str:
    """An HTTP URL's scheme, host and path only (no user part, query or fragment), for a link."""
    parts = _split(url)
    if parts is None:
        return url
    scheme, _, rest = parts
    return scheme + re.split(r"[?#]", rest, maxsplit=1)[0].rstrip("/")


def _url_secrets(url: str) -> list[str]:
    """The secrets inside a URL: its password and its query's credential values."""
    found = []
    _, _, password = split_login(url)
    if password:
        found.append(password)
    parts = _split(url)
    query = (parts[2] if parts else url).partition("?")[2]
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq and value and _secret_key(key):
            found.append(unquote(value))
    return found


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    upper = name.upper()
    return name in SECRET_NAMES or any(word in upper for word in SECRET_WORDS) or upper.endswith(SECRET_ENDINGS)


def known_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """The credentials of the environment: the values of variables named as such, and the
    passwords and query credentials inside the URLs any variable holds."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in env.items():
        if is_secret_name(name) and value:
            found.add(value)
        elif "://" in value:
            found.update(_url_secrets(value))
    return found


def hide(text: str, secrets: Iterable[str] | None = None) -> str:
    """Free text (a message, a log line) with every URL in it masked and every secret (by default
    :func:`known_secrets`), raw or percent-encoded, replaced by ``***``."""
    text = _URL_IN_TEXT.sub(lambda m: mask(m.group()), text)
    values = known_secrets() if secrets is None else set(secrets)
    for value in sorted(values, key=len, reverse=True):  # the longest first: one may hold another
        if len(value) < _SHORTEST:
            continue
        for form in {value, quote(value, safe=""), quote(value), quote_plus(value)}:
            text = text.replace(form, MASK)
    return text
