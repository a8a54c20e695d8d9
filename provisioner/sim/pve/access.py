"""Authentication of the simulated API: password tickets, CSRF tokens, API tokens.

Credentials come from ``sim.json`` (read at request time, so tokens can be added
while the server runs): ``root_password`` for ``root@pam``, optional ``users``
(``{"user@realm": "password"}``) and ``tokens`` as ``{"user@realm!name": "secret"}`` or
``{"user@realm!name": {"secret": ..., "privsep": 0|1}}`` (a list of ``{"tokenid"/"id",
"secret"/"value", "privsep"}`` objects is accepted too); privileges: sim/pve/acl.py.
Tickets look like PVE's (``PVE:user@realm:HEXTIME::signature``), signed with
HMAC-SHA256 under a key kept in ``SIM_ROOT/authkey``; they live two hours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

TICKET_LIFETIME = 7200
CSRF_LIFETIME = 7200


class AuthFailure(Exception):
    """401: the reason-line text PVE sends (``No ticket``, ``authentication failure``...)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the auth id PVE compares (``root@pam`` or ``root@pam!name``)."""

    authid: str
    token: bool
    ticket: bool

    @property
    def user(self) -> str:
        return self.authid.split("!", 1)[0]


def read_settings(sim_root: Path) -> dict:
    try:
        return json.loads((Path(sim_root) / "sim.json").read_text())
    except (OSError, ValueError):
        return {}


def write_settings(sim_root: Path, data: dict) -> None:
    """Replace sim.json atomically, keeping it private (it holds the root password)."""
    path = Path(sim_root) / "sim.json"
    tmp = path.with_suffix(".api.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _tokens(settings: dict) -> dict[str, str]:
    """tokenid -> secret (privilege separation and ACLs: sim/pve/acl.py)."""
    from provisioner.sim.pve.acl import tokens
    return {tid: t.secret for tid, t in tokens(settings).items()}


class Authenticator:
    def __init__(self, sim_root: Path) -> None:
        self.sim_root = Path(sim_root)
        key_path = self.sim_root / "authkey"
        if not key_path.exists():
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
        self._key = key_path.read_bytes()

    def _sign(self, text: str) -> str:
        mac = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode().rstrip("=")

    def check_password(self, username: str, password: str, realm: str | None = None) -> str:
        """Return the canonical user id, or raise AuthFailure("authentication failure")."""
        if realm and "@" not in username:
            username = f"{username}@{realm}"
        if password.startswith("PVE:"):  # ticket renewal: a valid ticket stands in for the password
            try:
                if self.verify_ticket(password) == username:
                    return username
            except AuthFailure:
                pass
            raise AuthFailure("authentication failure")
        settings = read_settings(self.sim_root)
        users = {"root@pam": settings.get("root_password")}
        users.update(settings.get("users") or {})
        expected = users.get(username)
        if expected is None or not hmac.compare_digest(str(expected), str(password)):
            raise AuthFailure("authentication failure")
        return username

    def make_ticket(self, user: str) -> str:
        plain = f"PVE:{user}:{int(time.time()):08X}"
        return f"{plain}::{self._sign(plain)}"

    def verify_ticket(self, ticket: str) -> str:
        plain, sep, sig = ticket.partition("::")
        parts = plain.split(":")
        if not sep or len(parts) != 3 or parts[0] != "PVE" or not hmac.compare_digest(sig, self._sign(plain)):
            raise AuthFailure("authentication failure")
        try:
            age = time.time() - int(parts[2], 16)
        except ValueError:
            raise AuthFailure("authentication failure") from None
        if age > TICKET_LIFETIME or age < -300:
            raise AuthFailure("authentication failure")
        return parts[1]

    def make_csrf(self, user: str) -> str:
        stamp = f"{int(time.time()):08X}"
        return f"{stamp}:{self._sign(stamp + ':' + user)}"

    def verify_csrf(self, user: str, token: str | None) -> None:
        stamp, _, sig = (token or "").partition(":")
        ok = bool(token) and hmac.compare_digest(sig, self._sign(stamp + ":" + user))
        if ok:
            try:
                ok = time.time() - int(stamp, 16) <= CSRF_LIFETIME
            except ValueError:
                ok = False
        if not ok:
            raise AuthFailure("Permission denied - invalid csrf token")

    def verify_token(self, value: str) -> str:
        """``user@realm!name=secret`` (the part after ``PVEAPIToken=``) -> token auth id."""
        tokenid, sep, secret = value.partition("=")
        known = _tokens(read_settings(self.sim_root)).get(tokenid)
        if not sep or "!" not in tokenid or known is None or not hmac.compare_digest(known, secret):
            raise AuthFailure("authentication failure")
        return tokenid

    def authenticate(self, method: str, headers: dict[str, str], cookies: dict[str, str]) -> Principal:
        """PVE's auth_handler: API token first, else ticket cookie (+ CSRF for writes)."""
        authz = headers.get("Authorization", "")
        ticket = cookies.get("PVEAuthCookie")
        if not ticket and authz.startswith("PVEAuthCookie="):
            ticket = authz[len("PVEAuthCookie="):]
        if not ticket and authz.startswith("PVEAPIToken="):
            try:
                return Principal(self.verify_token(authz[len("PVEAPIToken="):].strip()), True, False)
            except AuthFailure:
                raise AuthFailure("Authentication failed!") from None
        if not ticket:
            raise AuthFailure("No ticket")
        try:
            user = self.verify_ticket(ticket)
        except AuthFailure:
            raise AuthFailure("Authentication failed!") from None
        if method != "GET":
            self.verify_csrf(user, headers.get("CSRFPreventionToken"))
        return Principal(user, False, True)
