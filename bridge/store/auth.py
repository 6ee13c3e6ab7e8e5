"""The seller's Mercado Livre authorization: the one token row and the single-use OAuth states.

Every write goes through the database's write discipline (`Database.write()`: one short
BEGIN IMMEDIATE transaction); a refresh is single-flight across threads and processes by
the lease decided here under the write lock.

Secrets at rest (the access and refresh tokens, the PKCE verifier) are encrypted with Fernet when
TOKEN_ENCRYPTION_KEY holds keys (Mercado Livre asks integrators to protect them). `SEALED` marks
an encrypted value, so a row written before the key was set is read as it is and written
encrypted the next time it is written. Fernet encrypts with a random IV, so a stored token can no
longer be compared in SQL: the conditional writes read the row under the write lock and compare
the decrypted values.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from db_manager import Database


SEALED = "fernet:"
SECRET_COLUMNS = ("access_token", "refresh_token")


class UnreadableSecret(Exception):
    """A stored secret that no configured key decrypts (the message never holds it)."""


class TokenCipher:
    """Seals with the first key, opens with any (rotation); without keys, values stay plain text."""

    def __init__(self, keys: Sequence[str] = ()):
        self._first = Fernet(keys[0]) if keys else None
        self._all = MultiFernet([Fernet(k) for k in keys]) if keys else None

    def seal(self, value: str | None) -> str | None:
        if value is None or self._all is None:
            return value
        return SEALED + self._all.encrypt(value.encode()).decode()

    def open(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(SEALED):
            return stored
        if self._all is None:
            raise UnreadableSecret("TOKEN_ENCRYPTION_KEY is not set but the stored tokens are encrypted")
        try:
            return self._all.decrypt(stored[len(SEALED):].encode()).decode()
        except InvalidToken:
            raise UnreadableSecret("no key in TOKEN_ENCRYPTION_KEY decrypts the stored tokens") from None

    def is_current(self, stored: str | None) -> bool:
        """Stored the way a write now would store it: under the first key, or plain without keys."""
        if stored is None:
            return True
        if self._first is None:
            return not stored.startswith(SEALED)
        if not stored.startswith(SEALED):
            return False
        try:
            self._first.decrypt(stored[len(SEALED):].encode())
        except InvalidToken:
            return False
        return True


def unreadable_reason(exc: UnreadableSecret) -> str:
    return f"{exc}: put back the key that encrypted them, or run `./bridge.sh authorize` again"


def holder_alive(owner: str | None) -> bool:
    """Is the process named first in a lease owner ("<pid>-<thread>-<random>") still running?

    Both processes run on one host (one container). A poller killed while holding the lease
    cannot finish its refresh; waiting out its REFRESH_LEASE stalled every job for two minutes
    (chaos soak). An ownerless pause, or an owner we cannot read, is waited out.
    """
    pid = (owner or "").split("-", 1)[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def auth_decision(row: dict, now: float, margin: float, owner: str | None = None,
                  alive: Callable[[str | None], bool] = holder_alive) -> str:
    """What a caller wanting an access token does: fresh | reauth | wait | refresh.

    `owner` is the caller's own refresh attempt; None (a plain read) counts every live lease as another's.
    A lease whose holder process is gone (`alive`) is not waited for.
    """
    if row["status"] != "active" or not row["refresh_token"]:
        return "reauth"
    if row["access_token"] and (row["expires_at"] or 0) - margin > now:
        return "fresh"
    if row["refresh_lease_until"] > now and (owner is None or row["refresh_lease_owner"] != owner) \
            and alive(row["refresh_lease_owner"]):
        return "wait"
    return "refresh"


class AuthStore:
    """`db.auth`: commands change the row (store_…, claim_…, release_…), `current()` reads it."""

    def __init__(self, db: Database, cipher: TokenCipher | None = None):
        self._db = db
        self._cipher = cipher or TokenCipher()

    def current(self) -> dict:
        return self._opened(self._db.one("SELECT * FROM meli_auth WHERE id = 1"))

    def _opened(self, row) -> dict:
        """The row with its tokens decrypted. Tokens no configured key opens make it read as an
        authorization a person must renew, the reason saying how; nothing is written, so putting
        the key back is enough."""
        row = dict(row)
        try:
            opened = {column: self._cipher.open(row[column]) for column in SECRET_COLUMNS}
        except UnreadableSecret as exc:
            return dict(row, access_token=None, refresh_token=None, status="reauth_required",
                        status_reason=unreadable_reason(exc))
        return dict(row, **opened)

    def _stored(self, conn) -> dict:
        return self._opened(conn.execute("SELECT * FROM meli_auth WHERE id = 1").fetchone())

    def seed(self, access_token: str | None, refresh_token: str, now: float) -> bool:
        """Store tokens from the environment only when the store has never held any."""
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE meli_auth SET access_token = ?, refresh_token = ?, expires_at = ?,"
                " status = 'active', status_reason = NULL, updated_at = ?"
                " WHERE id = 1 AND refresh_token IS NULL AND status = 'missing'",
                (self._cipher.seal(access_token), self._cipher.seal(refresh_token),
                 now if access_token is None else now + 3600, now))
            return cur.rowcount == 1

    def reseal(self) -> int:
        """Store every secret the way a write now would (plain text from before the key, or under a
        key no longer first), so an old key can be dropped. Returns how many were rewritten; those
        no key opens stay as they are."""
        rewritten = 0
        with self._db.write() as conn:
            row = conn.execute("SELECT access_token, refresh_token FROM meli_auth WHERE id = 1").fetchone()
            cells = [(f"UPDATE meli_auth SET {column} = ? WHERE id = 1", (), row[column]) for column in SECRET_COLUMNS]
            cells += [("UPDATE oauth_states SET code_verifier = ? WHERE state = ?", (state,), verifier)
                      for state, verifier in conn.execute("SELECT state, code_verifier FROM oauth_states")]
            for update, where, stored in cells:
                if self._cipher.is_current(stored):
                    continue
                try:
                    value = self._cipher.open(stored)
                except UnreadableSecret:
                    continue
                conn.execute(update, (self._cipher.seal(value), *where))
                rewritten += 1
        return rewritten

    def secrets_at_rest(self) -> dict:
        """How the stored secrets are kept: how many, encrypted, stale (not as a write now would
        store them: plain text, or an older key) and unreadable (no configured key opens them)."""
        row = self._db.one("SELECT access_token, refresh_token FROM meli_auth WHERE id = 1")
        values = [row[column] for column in SECRET_COLUMNS]
        values += [r["code_verifier"] for r in self._db.all("SELECT code_verifier FROM oauth_states")]
        values = [v for v in values if v is not None]
        unreadable = 0
        for value in values:
            try:
                self._cipher.open(value)
            except UnreadableSecret:
                unreadable += 1
        return {"stored": len(values), "encrypted": sum(v.startswith(SEALED) for v in values),
                "stale": sum(not self._cipher.is_current(v) for v in values), "unreadable": unreadable}

    def claim_refresh(self, owner: str, now: float, margin: float, lease: float) -> tuple[str, dict]:
        """Decide, under the write lock, whether this caller refreshes.

        Returns ('fresh', row) when the stored access token is still good, ('reauth', row)
        when a human must authorize again, ('wait', row) while another caller holds the
        refresh lease, or ('refresh', row) with the lease now ours. `owner` must name one
        refresh attempt, never a whole process or client: threads sharing an owner would
        all win the lease and spend the same single-use refresh token.
        """
        with self._db.write() as conn:
            row = self._stored(conn)
            decision = auth_decision(row, now, margin, owner)
            if decision == "refresh":
                conn.execute("UPDATE meli_auth SET refresh_lease_owner = ?, refresh_lease_until = ? WHERE id = 1",
                             (owner, now + lease))
            return decision, row

    def store_refreshed(self, used_refresh_token: str, access_token: str, refresh_token: str,
                        expires_at: float, user_id: int | None, now: float) -> bool:
        """Write the new pair atomically, if the token we used is still the stored one.

        Whoever holds the lease now, and whatever the status says: Mercado Livre has just
        spent the stored refresh token, so the pair it gave us holds the only live one —
        a lease that ran out, or a loser's `invalid_grant` that already ended the
        authorization, must not make us drop it. Only a different stored refresh token
        (an authorization meanwhile) wins over ours. Returns False then.
        """
        with self._db.write() as conn:
            if self._stored(conn)["refresh_token"] != used_refresh_token:
                return False
            conn.execute(
                "UPDATE meli_auth SET access_token = ?, refresh_token = ?, expires_at = ?,"
                " user_id = COALESCE(?, user_id), status = 'active', status_reason = NULL,"
                " refresh_lease_owner = NULL, refresh_lease_until = 0, updated_at = ? WHERE id = 1",
                (self._cipher.seal(access_token), self._cipher.seal(refresh_token), expires_at, user_id, now))
            return True

    def release_lease(self, owner: str, pause_until: float = 0) -> None:
        """Give the lease back; with `pause_until`, nobody may claim it before then (after a failed refresh)."""
        with self._db.write() as conn:
            conn.execute("UPDATE meli_auth SET refresh_lease_owner = NULL, refresh_lease_until = ?"
                         " WHERE id = 1 AND refresh_lease_owner = ?", (pause_until, owner))

    def require_reauthorization(self, reason: str, now: float, used_refresh_token: str | None = None,
                                owner: str | None = None) -> bool:
        """Mark the authorization dead. Returns whether it was marked.

        With `used_refresh_token` (a refresh Mercado Livre refused), only while that token
        is still the stored one and no other caller's lease is live: a newer stored pair,
        or a refresh in flight that may store one, keeps the authorization alive.
        """
        with self._db.write() as conn:
            if used_refresh_token is None:
                cur = conn.execute("UPDATE meli_auth SET status = 'reauth_required', status_reason = ?,"
                                   " refresh_lease_owner = NULL, refresh_lease_until = 0, updated_at = ? WHERE id = 1",
                                   (reason, now))
            else:
                row = self._stored(conn)
                if row["refresh_token"] != used_refresh_token or not (
                        row["refresh_lease_owner"] in (None, owner) or row["refresh_lease_until"] <= now):
                    return False
                cur = conn.execute("UPDATE meli_auth SET status = 'reauth_required', status_reason = ?,"
                                   " refresh_lease_owner = NULL, refresh_lease_until = 0, updated_at = ? WHERE id = 1",
                                   (reason, now))
            return cur.rowcount == 1

    def store_authorized(self, user_id: int, nickname: str | None, access_token: str,
                         refresh_token: str, expires_at: float, now: float) -> None:
        """Tokens from an authorization code: a fresh start, whatever the previous state."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE meli_auth SET user_id = ?, nickname = ?, access_token = ?, refresh_token = ?,"
                " expires_at = ?, status = 'active', status_reason = NULL, refresh_lease_owner = NULL,"
                " refresh_lease_until = 0, updated_at = ? WHERE id = 1",
                (user_id, nickname, self._cipher.seal(access_token), self._cipher.seal(refresh_token),
                 expires_at, now))

    def set_identity(self, user_id: int, nickname: str | None) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE meli_auth SET user_id = ?, nickname = COALESCE(?, nickname) WHERE id = 1",
                         (user_id, nickname))

    def invalidate_access(self, access_token: str) -> None:
        """A 401 on this token: make the next call refresh (only if nobody did already)."""
        with self._db.write() as conn:
            if self._stored(conn)["access_token"] == access_token:
                conn.execute("UPDATE meli_auth SET expires_at = 0 WHERE id = 1")

    # ---- OAuth states: single use, for the authorization callback ---------------------------

    def create_oauth_state(self, state: str, code_verifier: str | None, now: float, ttl: float) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM oauth_states WHERE expires_at < ?", (now - 86400,))
            conn.execute("INSERT INTO oauth_states (state, code_verifier, created_at, expires_at)"
                         " VALUES (?, ?, ?, ?)", (state, self._cipher.seal(code_verifier), now, now + ttl))

    def consume_oauth_state(self, state: str, now: float) -> tuple[bool, str | None]:
        """Use a state once. Returns (valid, code_verifier)."""
        with self._db.write() as conn:
            row = conn.execute("SELECT * FROM oauth_states WHERE state = ?", (state,)).fetchone()
            if row is None or row["used_at"] is not None or row["expires_at"] < now:
                return False, None
            conn.execute("UPDATE oauth_states SET used_at = ? WHERE state = ?", (now, state))
        try:
            return True, self._cipher.open(row["code_verifier"])
        except UnreadableSecret:
            return False, None  # refused as an unknown link: `authorize` makes a new one
