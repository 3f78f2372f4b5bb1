"""The web UI's people and their API tokens.

``spoold users ...`` (spoold/cli/users.py) writes users and tokens; the web
UI reads them to log people in and to check API tokens.  Passwords arrive
here already hashed (spoold/passwords.py) and tokens as SHA-256 digests:
the store never sees a secret.
"""

from __future__ import annotations

import time
from typing import Any

from spoold.errors import Exists, NotFound
from spoold.store.base import Backend

ROLES = ("admin", "viewer")

_USER_COLUMNS = ("id", "name", "role", "password_hash", "created_at", "password_changed_at",
                 "last_login_at")


class UserOps(Backend):
    """Users with a role and an Argon2 password hash, API token digests, kept values."""

    def add_user(self, name: str, role: str, password_hash: str) -> int:
        now = time.time()
        with self.transaction() as cur:
            if self._user_id(cur, name) is not None:
                raise Exists(f"user {name} exists already")
            self.execute(cur, "INSERT INTO webui_user (name, role, password_hash, created_at, "
                              "password_changed_at) VALUES (?, ?, ?, ?, ?)",
                         (name, role, password_hash, now, now))
            return self.last_id(cur)

    def _user_id(self, cur: Any, name: str) -> int | None:
        row = self.execute(cur, "SELECT id FROM webui_user WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _known_user_id(self, cur: Any, name: str) -> int:
        user_id = self._user_id(cur, name)
        if user_id is None:
            raise NotFound(f"no user {name}")
        return user_id

    def users(self) -> list[dict[str, Any]]:
        """Every user, with the number of API tokens each holds; no password hashes."""
        with self.transaction(write=False) as cur:
            rows = self.execute(cur, "SELECT u.name, u.role, u.created_at, u.last_login_at, "
                                     "(SELECT COUNT(*) FROM webui_token t WHERE t.user_id = u.id) "
                                     "FROM webui_user u ORDER BY u.name").fetchall()
        names = ("name", "role", "created_at", "last_login_at", "tokens")
        return [dict(zip(names, row)) for row in rows]

    def user(self, name: str | None = None, user_id: int | None = None) -> dict[str, Any] | None:
        """One user by name or by id, password hash included, or None."""
        column, value = ("name", name) if user_id is None else ("id", user_id)
        with self.transaction(write=False) as cur:
            row = self.execute(cur, f"SELECT {', '.join(_USER_COLUMNS)} FROM webui_user "
                                    f"WHERE {column} = ?", (value,)).fetchone()
        return dict(zip(_USER_COLUMNS, row)) if row else None

    def set_password(self, name: str, password_hash: str) -> None:
        with self.transaction() as cur:
            user_id = self._known_user_id(cur, name)
            self.execute(cur, "UPDATE webui_user SET password_hash = ?, password_changed_at = ? "
                              "WHERE id = ?", (password_hash, time.time(), user_id))

    def note_login(self, user_id: int) -> None:
        with self.transaction() as cur:
            self.execute(cur, "UPDATE webui_user SET last_login_at = ? WHERE id = ?",
                         (time.time(), user_id))

    def delete_user(self, name: str) -> None:
        with self.transaction() as cur:
            user_id = self._known_user_id(cur, name)
            self.execute(cur, "DELETE FROM webui_token WHERE user_id = ?", (user_id,))
            self.execute(cur, "DELETE FROM webui_user WHERE id = ?", (user_id,))

    def add_token(self, name: str, digest: str) -> None:
        with self.transaction() as cur:
            user_id = self._known_user_id(cur, name)
            self.execute(cur, "INSERT INTO webui_token (digest, user_id, created_at) "
                              "VALUES (?, ?, ?)", (digest, user_id, time.time()))

    def revoke_tokens(self, name: str) -> int:
        with self.transaction() as cur:
            user_id = self._known_user_id(cur, name)
            return self.execute(cur, "DELETE FROM webui_token WHERE user_id = ?",
                                (user_id,)).rowcount

    def token_user(self, digest: str) -> dict[str, Any] | None:
        """The user an API token (given as its digest) belongs to, or None."""
        with self.transaction(write=False) as cur:
            row = self.execute(cur, f"SELECT {', '.join('u.' + c for c in _USER_COLUMNS)} "
                                    "FROM webui_token t JOIN webui_user u ON u.id = t.user_id "
                                    "WHERE t.digest = ?", (digest,)).fetchone()
        return dict(zip(_USER_COLUMNS, row)) if row else None
