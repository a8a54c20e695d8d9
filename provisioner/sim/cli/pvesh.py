"""``pvesh`` on the simulated host: the API as ``root@pam`` (what root over SSH gets on PVE).

``pvesh get|set|create|delete <api path> [--key value ...] [--output-format json|json-pretty|text]``
logs in to the node's own API with the root password (a ticket, so root-only keys
such as devN are allowed) and prints the result's ``data``. Errors go to stderr
as PVE prints them (``400 Parameter verification failed.`` + ``key: message``), exit 255.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import requests
import urllib3

METHODS = {"get": "GET", "set": "PUT", "create": "POST", "delete": "DELETE"}


def _parse(args: list[str]) -> tuple[dict[str, str], str]:
    params: dict[str, str] = {}
    fmt = "text"
    it = iter(args)
    for arg in it:
        if not arg.startswith("-"):
            raise SystemExit(f"400 too many arguments: {arg}")
        key = arg.lstrip("-")
        value = next(it, None)
        if value is None:
            raise SystemExit(f"400 Parameter verification failed.\n{key}: missing value")
        if key == "output-format":
            fmt = value
        else:
            params[key] = value
    return params, fmt


def _print(data: object, fmt: str) -> None:
    if fmt in ("json", "json-pretty"):
        print(json.dumps(data, indent=2 if fmt == "json-pretty" else None, sort_keys=True))
    elif isinstance(data, dict):
        for key in sorted(data):
            print(f"{key}: {data[key]}")
    elif isinstance(data, list):
        for row in data:
            print(json.dumps(row, sort_keys=True) if not isinstance(row, str) else row)
    elif data is not None:
        print(data)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[0] != "--root" or argv[2] not in METHODS:
        print("USAGE: pvesh get|set|create|delete <api_path> [OPTIONS]", file=sys.stderr)
        return 255
    root, verb, path = Path(argv[1]), argv[2], "/" + argv[3].strip("/")
    try:
        params, fmt = _parse(argv[4:])
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 255
    settings = json.loads((root / "sim.json").read_text())
    base = f"https://127.0.0.1:{settings['api_port']}/api2/json"
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    s = requests.Session()
    s.verify = False  # loopback to this node's own API, like pvesh's local call
    login = s.post(f"{base}/access/ticket",
                   data={"username": "root@pam", "password": settings["root_password"]}, timeout=30)
    login.raise_for_status()
    ticket = login.json()["data"]
    s.cookies.set("PVEAuthCookie", ticket["ticket"])
    s.headers["CSRFPreventionToken"] = ticket["CSRFPreventionToken"]
    method = METHODS[verb]
    kwargs = {"params": params} if method in ("GET", "DELETE") else {"data": params}
    resp = s.request(method, base + path, timeout=600, **kwargs)
    if resp.status_code != 200:
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        # pvesh prints the bare message, with the status only for parameter errors
        print(f"{resp.status_code} {resp.reason}" if resp.status_code == 400 else resp.reason,
              file=sys.stderr)
        for key, msg in sorted((body.get("errors") or {}).items()):
            print(f"{key}: {msg}", file=sys.stderr)
        return 255
    _print(resp.json().get("data"), fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
