"""`/ui/`: the operator dashboard, one static page (`dashboard.html`, no build step, no
external resources). The page itself holds no data and is open; everything it shows comes
from the orchestrator's own read APIs, called with the operator (or gateway) token the page
is given: `/ui/#token=...` (the fragment never reaches a server or a log), kept in the tab's
sessionStorage, or typed into its form. `genedge up` prints such a URL."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)

PAGE = Path(__file__).with_name("dashboard.html")
UI_PATHS = frozenset({"/ui", "/ui/"})

# The page may talk to this origin only: no external scripts, fonts or beacons.
_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


@lru_cache(maxsize=1)
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/ui", response_class=RedirectResponse)
async def ui_redirect() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/", response_class=HTMLResponse)
async def ui_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers=_HEADERS)
