"""The simulated Proxmox VE HTTP API (aiohttp, HTTPS on 127.0.0.1, ``/api2/json``).

Request flow, like pve-http-server + pve-manager's HTTPServer:
auth (ticket cookie + CSRF for writes, or ``PVEAPIToken``) -> the method must
exist in the chosen version's schema -> tokens only where ``allowtoken`` ->
schema validation (400 with per-key PVE messages) -> handler. Errors are sent as
PVE does: the reason line carries the message, body ``{"data":null,"message":...}``
(plus ``errors`` for parameter errors); auth failures are bare 401s.

    python -m provisioner.sim.api.server --root /var/lib/provision-sim/pve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from provisioner import pveschema
from provisioner.sim.api import tls
from provisioner.sim.lxc.base import Backend
from provisioner.sim.pve.access import Authenticator, AuthFailure, Principal, read_settings, write_settings
from provisioner.sim.pve.acl import Access, schema_check
from provisioner.sim.pve.conf import ConfStore
from provisioner.sim.pve.rules import RuleError
from provisioner.sim.pve.tasks import TaskManager

log = logging.getLogger("provisioner.sim.api.server")
access_log = logging.getLogger("provisioner.sim.api.access")
API_BASE = "/api2/json"
FULL_VERSION = {"8.4": "8.4.2", "9.1": "9.1.3"}
REPOID = {"8.4": "e8bd0b8a", "9.1": "d1e0f3c9"}


class ApiError(RuleError):
    """An API error with PVE's status and text (same shape as rules.RuleError)."""


@dataclass
class Request:
    """What a handler gets: the caller, the merged parameters, the server."""

    api: "SimApi"
    principal: Principal | None
    params: dict[str, Any]
    method: str
    path: str
    access: Access | None = None
    result_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.principal.authid if self.principal else ""

    def acl(self) -> Access:
        """Who may do what, as of this request (sim.json is read at request time)."""
        if self.access is None:
            self.access = Access(self.api.settings(), self.api.version)
        return self.access

    def check(self, path: str, privs: list[str], *, any_of: bool = False) -> None:
        """RPCEnvironment::check for the caller: PVE's 403 when a privilege is missing."""
        self.acl().check(self.user, path, privs, any_of=any_of)

    def may(self, path: str, privs: list[str], *, any_of: bool = False) -> bool:
        """The same check with ``noerr``: used where PVE filters instead of refusing."""
        return self.acl().has(self.user, path, privs, any_of=any_of)

    def vmid(self) -> int:
        return int(self.params["vmid"])


Handler = Callable[[Request], Any]
ROUTES: dict[tuple[str, str], Handler] = {}
NO_AUTH = {("/access/ticket", "GET"), ("/access/ticket", "POST")}


def route(template: str, method: str) -> Callable[[Handler], Handler]:
    """Register a handler for a schema path template (``/nodes/{node}/lxc``)."""
    def deco(fn: Handler) -> Handler:
        ROUTES[(template, method)] = fn
        return fn
    return deco


def _reason(message: str) -> str:
    return " ".join(message.split("\n")).strip() or "error"


def error_response(status: int, message: str, errors: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"data": None, "message": message if message.endswith("\n") else message + "\n"}
    if errors:
        body["errors"] = errors
    return web.Response(status=status, reason=_reason(message), text=json.dumps(body),
                        content_type="application/json", charset="utf-8")


class SimApi:
    """One simulated node's API server; state under ``sim_root`` (see ARCHITECTURE.md)."""

    def __init__(self, sim_root: Path, backend: Backend, version: str = "9.1", node: str = "pve",
                 port: int = 8006, host: str = "127.0.0.1") -> None:
        if version not in pveschema.VERSIONS:
            raise ValueError(f"unknown PVE version {version!r}")
        self.sim_root = Path(sim_root)
        self.sim_root.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.version = version
        self.node = node
        self.port = port
        self.host = host
        self.store = ConfStore(self.sim_root)
        self.tasks = TaskManager(self.sim_root, node)
        self.auth = Authenticator(self.sim_root)
        self.cert, self.key = tls.ensure_certificate(self.sim_root, node)
        self.fingerprint = tls.fingerprint(self.cert)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        from provisioner.sim.api import feature, lxc, node, snapshot, status  # noqa: F401 - registers routes

    # -- settings read at request time (fault injection) --------------------------------
    def settings(self) -> dict[str, Any]:
        return read_settings(self.sim_root)

    def full_version(self) -> str:
        return FULL_VERSION[self.version]

    # -- HTTP --------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", API_BASE + "/{tail:.*}", self._dispatch)
        return app

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            raw = await request.read()
            ctype = request.content_type
            if ctype == "application/json" and raw:
                body = json.loads(raw)
                if isinstance(body, dict):
                    params.update({k: v for k, v in body.items() if v is not None})
            elif raw:
                params.update(dict(parse_qsl(raw.decode(), keep_blank_values=True)))
        return params

    async def _dispatch(self, request: web.Request) -> web.Response:
        delay_ms = float(self.settings().get("delay_ms") or 0)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        method = request.method.upper()
        path = "/" + request.match_info["tail"].rstrip("/") if request.match_info["tail"] else "/"
        principal = None
        if (path, method) not in NO_AUTH:  # like pve-http-server: authenticate before routing
            try:
                principal = self.auth.authenticate(method, dict(request.headers), dict(request.cookies))
            except AuthFailure as exc:
                return web.Response(status=401, reason=_reason(str(exc)))
        other = self._other_node(path)
        if other is not None:  # like pveproxy: a request for another cluster node goes to that node
            return await self._proxy(request, other)
        try:
            template, path_params = pveschema.match_path(self.version, path)
            schema, _ = pveschema.method_schema(self.version, method, path)
            handler = ROUTES.get((template, method))
            if handler is None:
                raise pveschema.UnknownEndpoint(path)
        except pveschema.UnknownEndpoint:
            return error_response(501, f"Method '{method} {path}' not implemented")
        try:
            params = await self._params(request)
        except ValueError:
            return error_response(400, "Parameter verification failed.", {"_root": "malformed body"})
        for key, value in path_params.items():
            if key in params and str(params[key]) != value:
                return error_response(400, "Parameter verification failed.", {
                    key: "duplicate parameter (already defined in URI) with conflicting values!"})
            params[key] = value
        # pve-manager PVE/HTTPServer.pm:170-190@14a22df: allowtoken, then the schema's permission
        # check, then proxying to the node, then the handler (which validates the parameters)
        if principal and principal.token and not schema.allowtoken:
            return error_response(403, f"Permission check failed (URI '{path}' not available "
                                       "with API token, need proper ticket.\n)")
        access = Access(self.settings(), self.version)
        if principal is not None:
            try:
                schema_check(access, principal.authid, schema.permissions, params)
            except RuleError as exc:
                return error_response(exc.status, exc.message)
        if "node" in params and params["node"] != self.node:
            # an unknown node: PVE::Cluster::remote_node_ip falls back to a DNS lookup that dies
            # (pve-common src/PVE/Network.pm:891@f665029), and any die is a 500. (REFERENCE §1 had 595.)
            node = params["node"]
            return error_response(500, f"hostname lookup '{node}' failed - failed to get address "
                                       f"info for: {node}: Name or service not known")
        errors = pveschema.validate_params(schema, params)
        if errors:
            return error_response(400, "Parameter verification failed.", errors)
        req = Request(self, principal, params, method, path, access=access)
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, handler, req)
        except RuleError as exc:
            return error_response(exc.status, exc.message, exc.errors)
        except Exception as exc:  # noqa: BLE001 - PVE turns any die into a 500 with its text
            log.exception("%s %s failed", method, path)
            return error_response(500, str(exc) or type(exc).__name__)
        body: dict[str, Any] = {"data": data}
        body.update(req.result_attrs)
        return web.json_response(body)

    # -- cluster (sim/cluster.py) -----------------------------------------------------------
    def members(self) -> dict[str, dict[str, Any]]:
        from provisioner.sim.pve import cluster
        return cluster.members(self.sim_root)

    def _other_node(self, path: str) -> dict[str, Any] | None:
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "nodes" or parts[2] == self.node:
            return None
        return self.members().get(parts[2])

    async def _proxy(self, request: web.Request, member: dict[str, Any]) -> web.Response:
        """Forward the request as it came (auth headers included) to the member's API."""
        import aiohttp
        keep = ("Cookie", "CSRFPreventionToken", "Authorization", "Content-Type")
        headers = {k: v for k, v in request.headers.items() if k in keep}
        url = f"https://127.0.0.1:{member['api_port']}{request.rel_url}"
        body = await request.read()
        # the members' certificates are self-signed (a real cluster pins its own CA)
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, url, data=body or None, headers=headers,
                                       ssl=False) as resp:
                text = await resp.text()
                return web.Response(status=resp.status, reason=resp.reason, text=text,
                                    content_type=resp.content_type or "application/json")

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen (inside a running event loop)."""
        self._runner = web.AppRunner(self.make_app(), access_log=access_log,
                                     access_log_format='%a "%r" %s %b %Tfs')
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port,
                           ssl_context=tls.server_context(self.cert, self.key))
        await site.start()
        if self.port == 0:  # an ephemeral port was asked for: learn which
            server = site._server  # noqa: SLF001 - aiohttp exposes no public accessor
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> "SimApi":
        """Run the server in a background thread (for fixtures and tests); returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="pve-sim-api", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def url(self) -> str:
        return f"https://{self.host}:{self.port}{API_BASE}"

    def record_in_sim_json(self) -> None:
        """Make sim.json name the port and fingerprint actually served (only if they differ)."""
        data = read_settings(self.sim_root)
        wanted = {"api_port": self.port, "fingerprint": self.fingerprint}
        if data and any(data.get(k) != v for k, v in wanted.items()):
            write_settings(self.sim_root, {**data, **wanted})


def main(argv: list[str] | None = None) -> int:
    """``python -m provisioner.sim.api.server --root SIM_ROOT``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--version", choices=pveschema.VERSIONS)
    parser.add_argument("--node")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    settings = read_settings(args.root)
    version = args.version or settings.get("version") or "9.1"
    node = args.node or settings.get("node") or "pve"
    port = args.port if args.port is not None else int(settings.get("api_port") or 8006)
    from provisioner.sim.lxc.backend import LxcBackend
    api = SimApi(args.root, LxcBackend(args.root), version=str(version), node=node, port=port)

    async def serve() -> None:
        await api.start()
        api.record_in_sim_json()
        print(f"simulated PVE {api.full_version()} API on {api.url()}", flush=True)
        print(f"fingerprint {api.fingerprint}", flush=True)
        while True:
            await asyncio.sleep(3600)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the route handlers
    # register themselves in `provisioner.sim.api.server.ROUTES`, which __main__ would not see.
    from provisioner.sim.api.server import main as _main

    raise SystemExit(_main())

