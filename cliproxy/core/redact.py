"""Masking secrets out of text that may reach logs, events or API responses. Pure.

`SecretMasker` is built once per config load from every configured secret and masks all of them,
in the forms text carries them in (as written, JSON-escaped, URL-encoded, base64), with one
compiled regex: its cost per text does not grow with the number of secrets configured.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from cliproxy.core.config import Config

__all__ = ["SecretMasker", "config_secrets", "mask_secrets", "mask_key", "excerpt", "is_secret_header"]

# Things that look like credentials even when we do not know them: bearer tokens and common key shapes.
_LOOKS_SECRET = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\b(sk|pk|rk|gsk|xai|key)-[A-Za-z0-9_-]{8,}\b")
#: Shorter secrets are masked only as written: their encoded forms would match ordinary text.
_MIN_ENCODED = 8
_MIN_SECRET = 4
#: Header names that carry credentials (`Authorization`, `api-key`, `Ocp-Apim-Subscription-Key`, `X-Auth-Key`, ...).
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|passw|credential|signature|session")
#: A value that looks like a token whatever its header is called: long, and no spaces.
_TOKEN_VALUE = re.compile(r"\S{16,}")
_URLSAFE = str.maketrans("+/", "-_")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def mask_key(key: str) -> str:
    """A recognisable but useless form of a key: `sk-a...f9` (never more than 4 real characters)."""
    if len(key) <= 8:
        return "***"
    return f"{key[:2]}...{key[-2:]}"


def is_secret_header(name: str, value: str) -> bool:
    """Whether free text (logs, upstream errors) must have this vendor header value masked out.

    Every header value is masked where it is shown as a value (the management API, events); in free
    text only credential-like ones are, so that `X-Title: cliproxy` does not blank out the word
    "cliproxy" in every log line."""
    return bool(_CREDENTIAL_HEADER.search(name) or _TOKEN_VALUE.fullmatch(value))


def config_secrets(config: Config) -> list[str]:
    """Every secret `config` holds. An upstream can echo any of them back in an error (a client
    that pasted its key into a prompt, a header value), so every one is masked everywhere."""
    secrets = list(config.api_keys)
    if config.remote_management.secret_key:
        secrets.append(config.remote_management.secret_key)
    secrets += [target.secret for target in config.notify if target.secret]
    proxy_urls = [config.proxy_url, *(target.url for target in config.notify)]
    for vendor in config.vendors:
        secrets += [e.api_key for e in vendor.api_key_entries]
        secrets += [value for name, value in vendor.headers if is_secret_header(name, value)]
        proxy_urls += [e.proxy_url for e in vendor.api_key_entries]
    for url in proxy_urls:
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            secrets.append(password)
    return secrets


def _base64_fragments(secret: bytes) -> set[str]:
    """The base64 text of `secret` at each of the three alignments it can have inside a longer
    encoded value (`Basic base64(user:key)`), without the edge characters its neighbours share."""
    fragments: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret).decode("ascii")
        start = -(-offset * 8 // 6)  # the first character made only of the secret's bits
        end = (offset + len(secret)) * 8 // 6  # one past the last such character
        fragment = encoded[start:end]
        fragments.update((fragment, fragment.translate(_URLSAFE)))
    return fragments


def _forms(secret: str) -> set[str]:
    """`secret` as written, and as JSON, URL encoding and base64 would carry it."""
    forms = {secret}
    if len(secret) < _MIN_ENCODED:
        return forms
    escaped = json.dumps(secret)[1:-1]
    forms.update((escaped, json.dumps(secret, ensure_ascii=False)[1:-1], escaped.replace("/", "\\/")))
    for encoded in (quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)):
        forms.update((encoded, _PERCENT.sub(lambda m: m.group(0).lower(), encoded)))
    forms.update(_base64_fragments(secret.encode("utf-8", "surrogateescape")))
    return forms


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literal words, shaped as a trie: at each position the engine follows one
    path of characters instead of trying every word in turn (`re` does not do that for `a|b|c`:
    with 1,000 secrets that is 20 times slower). Longest match first, so a secret that contains
    another is masked whole."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict[str, Any]) -> str:
        run = []
        while len(node) == 1 and "" not in node:  # a stretch without branches: one literal
            [(char, node)] = node.items()
            run.append(char)
        prefix = re.escape("".join(run))
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return prefix
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return prefix + (f"(?:{body})?" if "" in node else body)

    return pattern(trie)


class SecretMasker:
    """Masks a fixed set of secrets (and credential-shaped text) out of any text; built once per config."""

    __slots__ = ("secrets", "_known")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        #: The secrets as configured, longest first (de-duplicated; empty and very short ones left out).
        self.secrets: tuple[str, ...] = tuple(sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True))
        forms = {form for secret in self.secrets for form in _forms(secret)}
        self._known: re.Pattern[str] | None = re.compile(_trie_pattern(forms)) if forms else None

    def mask(self, text: str) -> str:
        """Every known secret, in any of its forms, and anything shaped like a credential, as `***`."""
        return _LOOKS_SECRET.sub(lambda m: (m.group(1) or "") + "***", self.mask_known(text))

    def mask_known(self, text: str) -> str:
        """Only the configured secrets, in any of their forms."""
        return text if self._known is None else self._known.sub("***", text)

    def __repr__(self) -> str:  # never let a secret reach a log line through repr()
        return f"SecretMasker({len(self.secrets)} secrets)"


def mask_secrets(text: str, secrets: Iterable[str] | SecretMasker = ()) -> str:
    """Replace every known secret and anything shaped like a credential with `***`."""
    if isinstance(secrets, SecretMasker):
        return secrets.mask(text)
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET and secret in text:
            text = text.replace(secret, "***")
    return _LOOKS_SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


def excerpt(raw: bytes | str, secrets: Iterable[str] | SecretMasker = (), limit: int = 200) -> str:
    """A short, single-line, masked excerpt of an upstream error body for events and logs."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    masked = mask_secrets(text[: limit * 4], secrets)
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"
