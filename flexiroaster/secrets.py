"""Variables and secrets in the store: secrets Fernet-encrypted at rest, resolved per run, masked."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import Conflict, FlexiError, NotFound, SpecError
from .records import now
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# `{{ secrets.NAME }}` / `{{ vars.NAME }}` in a pipeline's YAML.
REFERENCE = re.compile(r"\{\{\s*(secrets|vars)\.([A-Za-z_][A-Za-z0-9_]*)")
KINDS = ("secrets", "vars")
MASK = "***"


class SecretKeyError(FlexiError):
    """The key at hand does not decrypt what is stored."""

    status = 409
    code = "secret_key_mismatch"


@dataclass(frozen=True)
class Variable:
    key: str
    value: str | None  # None for a secret: its value never leaves this module except to a run
    secret: bool
    description: str | None
    created_at: datetime
    updated_at: datetime


def check_key(key: str) -> str:
    if not KEY.match(key):
        raise SpecError(
            f"invalid variable name {key!r}: use capitals, digits and _ (pattern ^[A-Z_][A-Z0-9_]*$)"
        )
    return key


def _key_file(path: Path) -> bytes:
    """The Fernet key in `path`, made (mode 0600) if there is none yet."""
    from cryptography.fernet import Fernet

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    log.info("secret encryption key created in %s", path)
    return key


class Masker:
    """Replaces the secret values one run knows with `***` in any text about to be recorded."""

    def __init__(self, values: list[str] | None = None):
        # Longest first, so a secret that contains another is masked whole.
        self.values = sorted({v for v in values or [] if v}, key=len, reverse=True)

    def __call__(self, value: Any) -> Any:
        if not self.values or value is None:
            return value
        if isinstance(value, str):
            for v in self.values:
                value = value.replace(v, MASK)
            return value
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


class SecretBox:
    """The Fernet key that encrypts what the store keeps secret (variables and connections):
    FLEXIROASTER_SECRET_KEY, else DATA_DIR/secret.key (made 0600 on first use)."""

    def __init__(self, settings: Settings):
        from cryptography.fernet import Fernet

        if settings.secret_key is not None:
            raw, self.key_source = (
                settings.secret_key.get_secret_value().encode(),
                "FLEXIROASTER_SECRET_KEY",
            )
        else:
            path = settings.data_dir / "secret.key"
            raw, self.key_source = _key_file(path), f"key file {path}"
        try:
            self._fernet = Fernet(raw)
        except ValueError as exc:
            raise FlexiError(
                f"the secret key from {self.key_source} is not a Fernet key ({exc}); make one with"
                " `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
            ) from None

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, token: str, what: str) -> str:
        """The plain text; SecretKeyError naming `what` when the key is not the one it was
        stored with."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"cannot decrypt {what}: the key from {self.key_source} does not match the"
                " one it was stored with (stored secrets are left as they are; restore that key)"
            ) from None


class Variables:
    """The variables table: plain values as is, secrets as Fernet ciphertext."""

    def __init__(self, store: Store, settings: Settings, box: SecretBox | None = None):
        self.store = store
        self.box = box or SecretBox(settings)
        self.key_source = self.box.key_source

    def _out(self, row: dict[str, Any]) -> Variable:
        return Variable(
            row["key"], None if row["secret"] else row["value"], row["secret"],
            row["description"], row["created_at"], row["updated_at"],
        )  # fmt: skip

    def list(self) -> list[Variable]:
        return [self._out(r) for r in self.store.rows("variables", order="key")]

    def get(self, key: str) -> Variable:
        found = self.store.rows("variables", "key = ?", [check_key(key)])
        if not found:
            raise NotFound(f"no variable or secret {key}")
        return self._out(found[0])

    def put(
        self, key: str, value: str, *, secret: bool, description: str | None = None
    ) -> Variable:
        """Create or replace; a secret is encrypted before it reaches the store."""
        check_key(key)
        old = self.store.rows("variables", "key = ?", [key])
        stamp = now()
        stored = self.box.encrypt(value) if secret else value
        row = {
            "key": key, "value": stored, "secret": secret, "description": description,
            "created_at": old[0]["created_at"] if old else stamp, "updated_at": stamp,
        }  # fmt: skip
        self.store.put_rows("variables", [row])
        return self._out(row)

    def delete(self, key: str) -> None:
        self.get(key)
        users = self.usage().get(key, [])
        if users:
            raise Conflict(
                f"{key} is used by pipeline(s) {', '.join(users)}; remove it from them first"
            )
        self.store.delete_rows("variables", "key = ?", [key])

    def usage(self) -> dict[str, list[str]]:
        """Name -> ids of the stored pipelines that reference it as `secrets.` or `vars.`."""
        used: dict[str, set[str]] = {}
        for row in self.store.rows("pipelines", order="id"):
            for _kind, name in REFERENCE.findall(row["spec_yaml"] or ""):
                used.setdefault(name, set()).add(row["id"])
        return {k: sorted(v) for k, v in used.items()}

    def resolve(self, names: dict[str, set[str]]) -> dict[str, dict[str, str]]:
        """{"secrets": {...}, "vars": {...}} for the names a run references (kind -> names).
        Names not stored are left out (the caller reports them where they are used)."""
        out: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        wanted = sorted(set().union(*names.values())) if names else []
        if not wanted:
            return out
        rows = {
            r["key"]: r for r in self.store.rows("variables", "key IN (SELECT unnest(?))", [wanted])
        }
        for kind in KINDS:
            for name in sorted(names.get(kind, ())):
                row = rows.get(name)
                if row is None or row["secret"] != (kind == "secrets"):
                    continue
                out[kind][name] = (
                    self._decrypt(name, row["value"]) if row["secret"] else row["value"]
                )
        return out

    def _decrypt(self, key: str, token: str) -> str:
        return self.box.decrypt(token, f"secret {key}")


def references(config: Any) -> dict[str, set[str]]:
    """kind -> names of the `secrets.` / `vars.` placeholders in a config tree."""
    from .template import placeholders

    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, _filt, _path in placeholders(config):
        head, _, rest = name.partition(".")
        if head in KINDS and rest:
            found[head].add(rest)
    return found
