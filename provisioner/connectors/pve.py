"""The Proxmox VE API, on proxmoxer.

proxmoxer builds the resource paths and decodes answers; this module owns what
it does not do the way we need:
- TLS is verified: system CAs, a CA file, or a pinned SHA-256 fingerprint
  (checked by urllib3 on every connection, the ticket request included);
- the password ticket is fetched through the same verified session;
- tasks are judged by ``exitstatus`` (``OK`` / ``WARNINGS: n``), with timeouts
  and the log tail in the error;
- reads (and only reads) are retried on transient transport errors;
- every error is translated once into ``ProxmoxError``;
- every call is counted (for the round-trip benchmark) and may be validated
  against the official schema before it is sent.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.backends.https import ProxmoxHTTPAuthBase
from proxmoxer.core import ResourceException
from requests.adapters import HTTPAdapter
from requests.cookies import cookiejar_from_dict
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import ProxmoxError, TaskFailed
from ..redact import redact

TASK_OK = re.compile(r"^(OK|WARNINGS: \d+)$")
#: renew a password ticket after this many seconds (it lives 7200)
TICKET_RENEW_AFTER = 3600.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 8006
    node: str = "pve"
    ca_file: str | None = None
    fingerprint: str | None = None  # "AB:CD:..." SHA-256
    insecure: bool = False
    timeout: float = 30.0


@dataclass(frozen=True)
class Credentials:
    """Either a token (``user@realm!name`` + secret) or a user + password."""

    token_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_root_password(self) -> bool:
        return self.token_id is None and self.user == "root@pam"


def real_lines(log: Any) -> list[dict[str, Any]]:
    """A task log page without PVE's placeholder: an empty log reads as ``[{n: 1, t: "no content"}]``
    (pve-common src/PVE/Tools.pm:791-795@f665029). Counting it as line 1 would skip the task's
    real first line at the next poll, and printing it says nothing."""
    items = list(log or [])
    if len(items) == 1 and items[0].get("t") == "no content" and int(items[0].get("n", 0)) == 1:
        return []
    return items


class _PinnedAdapter(HTTPAdapter):
    """Accept exactly the certificate with this SHA-256 fingerprint (no CA needed)."""

    def __init__(self, fingerprint: str, **kw: Any) -> None:
        self._fingerprint = fingerprint.replace(":", "").lower()
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        kw["assert_fingerprint"] = self._fingerprint
        kw["cert_reqs"] = "CERT_NONE"
        super().init_poolmanager(*args, **kw)


class _Auth(ProxmoxHTTPAuthBase):
    """Token header, or ticket cookie + CSRF token on writes."""

    def __init__(self, creds: Credentials, verify: bool | str, timeout: float) -> None:
        super().__init__(timeout=timeout, verify_ssl=verify)
        self._creds = creds
        self.ticket: str | None = None
        self.csrf: str | None = None

    def get_cookies(self):  # noqa: ANN201 - proxmoxer's interface
        return cookiejar_from_dict({"PVEAuthCookie": self.ticket} if self.ticket else {})

    def __call__(self, req):  # noqa: ANN001, ANN204
        if self._creds.token_id:
            req.headers["Authorization"] = f"PVEAPIToken={self._creds.token_id}={self._creds.token_secret}"
        elif req.method != "GET" and self.csrf:
            req.headers["CSRFPreventionToken"] = self.csrf
        return req


class _Transient(Exception):
    """A read failed for a reason that may pass (connection reset, timeout, 502-504)."""


#: (schema version, method, path, params) -> problems by parameter; empty when the request is valid
Validator = Callable[[str, str, str, dict[str, Any]], dict[str, str]]


def _fix_for(status: int, creds: Credentials) -> str | None:
    """What to do about an authentication failure (PVE answers a bare 401, no reason in the body)."""
    if status != 401:
        return None
    if creds.token_id:
        return (f"the API token {creds.token_id} was refused: check proxmox.auth.token_id and that the secret "
                "source (token_secret) holds that token's secret; `pveum user token list USER` on the node lists "
                "the tokens, `pveum user token add USER NAME` makes a new one (its secret is shown once)")
    return "the login was refused: check proxmox.auth.user and the password source"


class PVE:
    """A connection to one Proxmox VE node's API."""

    def __init__(self, endpoint: Endpoint, creds: Credentials, *, validator: Validator | None = None) -> None:
        self.endpoint = endpoint
        self.creds = creds
        self.node = endpoint.node
        self.calls = 0
        self._calls_lock = threading.Lock()
        self._version: dict[str, Any] | None = None
        self._validator = validator
        #: the PVE API schema ("8.4", "9.1") requests are validated against; None until the
        #: server's version is known (facts set it from /version), and nothing is checked before
        self.schema_version: str | None = None
        verify: bool | str
        if endpoint.fingerprint or endpoint.insecure:
            verify = False
        else:
            verify = endpoint.ca_file or True
        self._auth = _Auth(creds, verify, endpoint.timeout)
        # A token needs no network at construction; the ticket is fetched below through
        # our own verified session instead of proxmoxer's unpinned requests.post.
        self._api = ProxmoxAPI(endpoint.host, port=endpoint.port, user="x@pam", token_name="x",
                               token_value="x", verify_ssl=verify, timeout=endpoint.timeout)
        session: requests.Session = self._api._store["session"]
        session.auth = self._auth
        if endpoint.fingerprint:
            session.mount(f"https://{endpoint.host}:{endpoint.port}/", _PinnedAdapter(endpoint.fingerprint))
        session.hooks["response"].append(self._count)
        self._session = session
        self.base_url = self._api._store["base_url"]
        self._ticket_at = 0.0
        if creds.token_id is None:
            self._login()

    # -- plumbing -------------------------------------------------------------------------------

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._calls_lock:  # facts read a container's config, pending and status at once
            self.calls += 1

    def _login(self) -> None:
        try:
            # ProxmoxHttpSession.request has no `json` parameter, so not .post()
            resp = self._session.request("POST", self.base_url + "/access/ticket",
                                         data={"username": self.creds.user, "password": self.creds.password},
                                         timeout=self.endpoint.timeout)
        except requests.RequestException as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:
            raise ProxmoxError(f"login as {self.creds.user} failed: {resp.status_code} {resp.reason}",
                               status=resp.status_code, host=self.endpoint.host,
                               fix="check proxmox.auth.user and the password source")
        data = resp.json()["data"]
        self._auth.ticket = data["ticket"]
        self._auth.csrf = data["CSRFPreventionToken"]
        self._ticket_at = time.monotonic()

    def _renew_ticket(self) -> None:
        """A password ticket lives two hours (pve-access-control src/PVE/AccessControl.pm:58@5ccd07d):
        renew it well before, by logging in with the ticket itself as the password (what the
        web UI does); a long `up` (a llama.cpp build) outlives one otherwise."""
        if self.creds.token_id is not None or self._auth.ticket is None:
            return
        if time.monotonic() - self._ticket_at < TICKET_RENEW_AFTER:
            return
        try:
            resp = self._session.request("POST", self.base_url + "/access/ticket",
                                         data={"username": self.creds.user, "password": self._auth.ticket},
                                         timeout=self.endpoint.timeout)
        except requests.RequestException as exc:
            raise self._transport_error(exc) from None
        if resp.status_code != 200:  # expired after all (a suspended laptop): log in again
            self._login()
            return
        data = resp.json()["data"]
        self._auth.ticket, self._auth.csrf = data["ticket"], data["CSRFPreventionToken"]
        self._ticket_at = time.monotonic()

    def _transport_error(self, exc: Exception) -> ProxmoxError:
        text = redact(str(exc))
        fix = None
        if "fingerprint" in text.lower() or isinstance(exc, requests.exceptions.SSLError):
            fix = ("the server's certificate is not trusted: set proxmox.fingerprint to its SHA-256 "
                   "fingerprint (Datacenter → Node → Certificates in the web UI) or proxmox.ca_file")
        return ProxmoxError(f"cannot reach the Proxmox API at {self.base_url}: {text}",
                            host=self.endpoint.host, fix=fix)

    def _translate(self, exc: ResourceException, method: str, path: str) -> ProxmoxError:
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        # proxmoxer's stand-in for a body that is not JSON ({"errors": b''} for a bare 401): not PVE's words
        errors = {k: v for k, v in errors.items() if not isinstance(v, (bytes, bytearray))}
        msg = redact(str(exc.content or exc.status_message)).strip()
        fix = None
        if exc.status_code == 403 and "only allowed for root@pam" not in msg:
            fix = ("the API user or token lacks this privilege; a privilege-separated token (pveum's default) "
                   "has only the ACLs given to the token itself: see README \"API token and privileges\"")
        return ProxmoxError(f"{method} {path}: {exc.status_code} {msg}", status=exc.status_code,
                            errors={k: redact(str(v)).strip() for k, v in errors.items()},
                            host=self.endpoint.host, fix=fix or _fix_for(exc.status_code, self.creds))

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        self._renew_ticket()
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if self._validator is not None and self.schema_version is not None:
            problems = self._validator(self.schema_version, method, path, params)
            if problems:
                raise ProxmoxError(f"{method} {path}: the request does not match the PVE API schema",
                                   errors=problems, host=self.endpoint.host,
                                   fix="this is a bug in provision; please report it with this message")
        resource = self._api(path.strip("/").split("/")) if path.strip("/") else self._api
        try:
            if method == "GET":
                return self._get(resource, params)
            return getattr(resource, method.lower())(**params)
        except ResourceException as exc:
            raise self._translate(exc, method, path) from None
        except (requests.RequestException, _Transient) as exc:
            raise self._transport_error(exc.__cause__ or exc if isinstance(exc, _Transient) else exc) from None

    @retry(retry=retry_if_exception_type(_Transient), stop=stop_after_attempt(4),
           wait=wait_exponential(multiplier=0.2, max=3), reraise=True)
    def _get(self, resource: Any, params: dict[str, Any]) -> Any:
        try:
            return resource.get(**params)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(str(exc)) from exc
        except ResourceException as exc:
            if exc.status_code in (502, 503, 504):
                raise _Transient(str(exc)) from exc
            raise

    # -- the calls we use -----------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params)

    def post(self, path: str, **params: Any) -> Any:
        return self._call("POST", path, params)

    def put(self, path: str, **params: Any) -> Any:
        return self._call("PUT", path, params)

    def delete(self, path: str, **params: Any) -> Any:
        return self._call("DELETE", path, params)

    def ct(self, vmid: int, sub: str = "") -> str:
        """Path of a container resource on our node."""
        return f"/nodes/{self.node}/lxc/{vmid}" + (f"/{sub}" if sub else "")

    def version(self) -> dict[str, Any]:
        """``GET /version``, asked once per connection (the CLI asks early, while the run lock is taken)."""
        if self._version is None:
            self._version = self.get("/version")
        return self._version

    # -- tasks ----------------------------------------------------------------------------------

    def wait_task(self, upid: str, *, timeout: float = 900.0, what: str = "task",
                  on_log: Callable[[str], None] | None = None, poll: float = 0.3) -> str:
        """Wait for a task; return its exitstatus if it succeeded, raise TaskFailed otherwise."""
        node = upid.split(":")[1] if upid.startswith("UPID:") else self.node
        quoted = urllib.parse.quote(upid, safe="")
        deadline = time.monotonic() + timeout
        seen = 0
        delay = poll
        while True:
            status = self.get(f"/nodes/{node}/tasks/{quoted}/status")
            if on_log is not None:
                for line in real_lines(self.get(f"/nodes/{node}/tasks/{quoted}/log", start=seen, limit=500)):
                    seen = max(seen, int(line.get("n", seen)))
                    on_log(str(line.get("t", "")))
            if status.get("status") == "stopped":
                exitstatus = status.get("exitstatus")
                if exitstatus and TASK_OK.match(str(exitstatus)):
                    return str(exitstatus)
                raise TaskFailed(f"{what} failed: {exitstatus}", upid=upid, exitstatus=exitstatus,
                                 log_tail=self.task_log_tail(upid), host=self.endpoint.host)
            if time.monotonic() > deadline:
                raise TaskFailed(f"{what} did not finish within {timeout:.0f}s", upid=upid, exitstatus=None,
                                 log_tail=self.task_log_tail(upid), host=self.endpoint.host,
                                 fix="look at the task in the Proxmox web UI; raise proxmox.task_timeout")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def task_log_tail(self, upid: str, lines: int = 20) -> list[str]:
        node = upid.split(":")[1] if upid.startswith("UPID:") else self.node
        try:
            log = self.get(f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/log", start=0, limit=5000)
        except ProxmoxError:
            return []
        return [redact(str(e.get("t", ""))) for e in real_lines(log)][-lines:]
