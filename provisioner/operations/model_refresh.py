"""``up --refresh-models``: what the hub says each unpinned model's revision holds now.

A model whose ``revision`` is a branch or tag (``main`` by default) can change upstream; one
pinned to a commit (40 hex digits) cannot and is not asked about. For each unpinned Hugging
Face file this asks the hub once, the way the download script does (a HEAD on the ``resolve``
URL without following the redirect: ``x-linked-etag`` is the LFS file's sha256, ``x-repo-commit``
the commit the revision points at), from this machine, before planning. The model step then
plans a fresh download for every file whose sha256 differs from the verified one's, and the
plan shows it before anything is pulled.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from ..config import read_secret
from ..config.schema import HostFile
from ..errors import ProvisionError
from ..facts.services import model_roles
from .model_transfer import hub_url

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None


def pinned(revision: str) -> bool:
    return bool(COMMIT_RE.match(revision))


def head(url: str, token: str | None, timeout: float = 20.0) -> dict[str, str]:
    """The hub's answer for one file: sha256, commit, size (empty values when it gives none)."""
    request = urllib.request.Request(url, method="HEAD", headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        response = opener.open(request, timeout=timeout)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code >= 400:
            raise ProvisionError(f"the hub answered HTTP {exc.code} for {url}",
                                 fix="check model.repo/file/revision (and model.token for a gated repo)") from None
        headers = exc.headers  # a 3xx: the redirect carries the headers we want
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ProvisionError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}",
                             fix="check the network (or HF_ENDPOINT), or run without --refresh-models") from None
    etag = (headers.get("x-linked-etag") or headers.get("etag") or "").strip('"').removeprefix("W/").strip('"')
    return {"sha256": etag if re.fullmatch(r"[0-9a-f]{64}", etag) else "",
            "commit": headers.get("x-repo-commit") or "", "size": headers.get("x-linked-size") or ""}


def upstream_revisions(cfg: HostFile) -> dict[str, dict[str, str]]:
    """role -> the hub's sha256 / commit / size, for every unpinned Hugging Face model file."""
    out: dict[str, dict[str, str]] = {}
    for role, m, spec in model_roles(cfg):
        if not spec.repo or pinned(spec.revision):
            continue
        where = "model" if m is cfg.models[0] else f"models[{cfg.models.index(m)}]"
        token = read_secret(spec.token, f"{where}.token") if spec.token else None
        out[role] = head(hub_url(spec), token)
    return out
