"""The annotators of a votes store: salted scrypt hashes of their passwords (never the passwords), the study
owner's users file, and login checks with limits on failed attempts, counted in the database so that every app
process sees them. A mixin of `votes.VoteStore`, which gives it `_connect`, `_transaction` and `_now`."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["Annotators", "read_users", "stamp"]

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
# Login limits: a guesser gets 5 tries a minute at one name (an annotator mistyping gets the same), and one address
# 30 a minute over all names (a lab behind one NAT address logging in together stays under it). Over a limit the
# answer is False without computing scrypt, so a flood costs the server nothing. A success does not count.
LOGIN_WINDOW_S = 60.0
MAX_FAILED_PER_NAME = 5
MAX_FAILED_PER_ADDRESS = 30


def stamp(t: datetime) -> str:
    """A time as stored: UTC, milliseconds, one fixed format, so that text order is time order."""
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _hash_password(password: str, salt: bytes, params: dict) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **params)


def read_users(path: str | Path) -> dict[str, str]:
    """`username:password` lines (blank lines and `#` comments skipped) -> {username: password}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no users file")
    users = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, password = line.partition(":")
        name = name.strip()
        if not colon or not password:
            raise ValueError(f"{path}:{n}: expected username:password")
        if not USERNAME.fullmatch(name):
            raise ValueError(f"{path}:{n}: username {name!r}: use 1-64 letters, digits or _ . @ + -")
        if name in users:
            raise ValueError(f"{path}:{n}: username {name!r} appears twice")
        users[name] = password
    if not users:
        raise ValueError(f"{path}: no username:password lines")
    return users


class Annotators:
    """Adding annotators, checking their logins; refusing unknown ones."""

    LOCK = ""         # SQL suffix of the annotator lookup that locks their row until the transaction ends
    LOGIN_LOCK = ""   # SQL that serialises login checks (SQLite's write transactions are serial already)

    def add_annotator(self, username: str, password: str) -> None:
        """Add an annotator, or set a new password for one; only a salted scrypt hash is stored."""
        if not USERNAME.fullmatch(username):
            raise ValueError(f"username {username!r}: use 1-64 letters, digits or _ . @ + -")
        if not password:
            raise ValueError(f"annotator {username!r}: empty password")
        salt = secrets.token_bytes(16)
        digest = _hash_password(password, salt, SCRYPT)
        with self._transaction() as db:
            db.execute("INSERT INTO annotators VALUES (?, ?, ?, ?, ?) ON CONFLICT(username) DO UPDATE SET "
                       "salt=excluded.salt, hash=excluded.hash, params=excluded.params",
                       (username, salt, digest, json.dumps(SCRYPT), stamp(self._now(db))))

    def add_annotators(self, users_file: str | Path) -> list[str]:
        """Every `username:password` line of the study owner's file (see `read_users`); their names."""
        users = read_users(users_file)
        for name, password in users.items():
            self.add_annotator(name, password)
        return list(users)

    def annotators(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT username FROM annotators ORDER BY username", ())]

    def check_login(self, username: str, password: str, address: str | None = None) -> bool:
        """Whether the password is the annotator's. An unknown name costs the same time as a wrong password; past
        `MAX_FAILED_PER_NAME` (or `MAX_FAILED_PER_ADDRESS` from `address`) failures within `LOGIN_WINDOW_S` the
        answer is False at once, scrypt not computed. Attempts are counted in the database (all processes)."""
        name = str(username)[:65]
        with self._transaction() as db:
            if self.LOGIN_LOCK:
                db.execute(self.LOGIN_LOCK, ())
            now = self._now(db)
            db.execute("DELETE FROM logins WHERE at < ?", (stamp(now - timedelta(seconds=LOGIN_WINDOW_S)),))
            by_name = db.execute("SELECT COUNT(*) FROM logins WHERE username = ?", (name,)).fetchone()[0]
            by_address = 0 if address is None else db.execute("SELECT COUNT(*) FROM logins WHERE address = ?",
                                                              (address,)).fetchone()[0]
            if by_name >= MAX_FAILED_PER_NAME or by_address >= MAX_FAILED_PER_ADDRESS:
                return False
            attempt = db.execute("INSERT INTO logins (username, address, at) VALUES (?, ?, ?) RETURNING id",
                                 (name, address, stamp(now))).fetchone()[0]  # a failure until proven otherwise
            row = db.execute("SELECT salt, hash, params FROM annotators WHERE username = ?", (name,)).fetchone()
        salt, digest, params = row if row else (b"\0" * 16, b"", json.dumps(SCRYPT))
        ok = hmac.compare_digest(_hash_password(str(password), bytes(salt), json.loads(params)), bytes(digest))
        if row and ok:
            with self._transaction() as db:
                db.execute("DELETE FROM logins WHERE id = ?", (attempt,))
        return bool(row) and ok

    def _known(self, db, annotator: str) -> None:
        """Refuses an unknown annotator; on PostgreSQL also locks their row: their serves and votes run one by one."""
        if not db.execute("SELECT 1 FROM annotators WHERE username = ?" + self.LOCK, (annotator,)).fetchone():
            raise ValueError(f"annotator {annotator!r}: unknown (add them from the users file)")
