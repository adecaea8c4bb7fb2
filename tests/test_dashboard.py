"""The operator dashboard (`/ui/` on the orchestrator) in a real browser: Playwright driving
Debian's Chromium against a real orchestrator with two real agents. The grid shows every
host and model at the level the agents report, follows a `PUT level` within seconds, shows
a failed model's reason, and the what-if panel shows a plan. Saves a screenshot (set
GENEDGE_DASHBOARD_PNG=docs/img/dashboard.png to refresh the README's)."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from orchestrator.app import create_app as create_orchestrator
from tests.conftest import AGENT_TOKEN, OPERATOR_TOKEN, serving
from tests.test_orchestrator_system import (
    agent,
    live_agents,
    orch_settings,
    serve_orchestrator,
    until,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-sd")
HOSTS = ("edge-a", "edge-b")

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not at /usr/bin/chromium (apt install chromium)"
)


async def test_the_dashboard_shows_the_fleet_follows_changes_and_plans(
    model_zoo: Path, tmp_path: Path
) -> None:
    stores = {h: tmp_path / f"store-{h}" for h in HOSTS}
    for s in stores.values():
        shutil.copytree(model_zoo, s)
    # edge-b's tiny-llama passes the scan but cannot load: a config that no longer
    # matches its weights
    cfg_path = stores["edge-b"] / "tiny-llama" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] *= 2
    cfg_path.write_text(json.dumps(cfg))

    async with AsyncExitStack() as stack:
        o, _, port = await serve_orchestrator(stack, orch_settings(tmp_path))
        agents = {
            h: await stack.enter_async_context(agent(stores[h], tmp_path, h, port)) for h in HOSTS
        }
        for c in agents.values():
            c.headers["authorization"] = f"Bearer {AGENT_TOKEN}"

        async def settled() -> bool:
            if await live_agents(o) != set(HOSTS):
                return False
            p = (await o.get("/v1/placement")).json()
            return p["computed_at"] is not None and p["pending_commands"] == 0

        await until(settled, timeout=120)

        pw = await stack.enter_async_context(playwright_api.async_playwright())
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        stack.push_async_callback(browser.close)
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(f"http://127.0.0.1:{port}/ui/#token={OPERATOR_TOKEN}")
        assert "token=" not in page.url  # the token leaves the address bar at once

        async def level_in_page(model: str, host: str) -> Any:
            return await page.get_attribute(f'[data-cell="{model}|{host}"] .cell', "data-level")

        # every host in the fleet panel, every (model, host) cell at the agent's level
        await page.wait_for_selector('[data-cell="tiny-sd|edge-b"] .cell', timeout=15_000)
        for h in HOSTS:
            assert await page.locator(f'#fleet tr[data-host="{h}"]').count() == 1
            for m in MODELS:
                st = (await agents[h].get(f"/v1/models/{m}/status")).json()
                assert await level_in_page(m, h) == st["level"], (m, h)

        # a level change at an agent shows within a few seconds
        r = await agents["edge-a"].put(
            "/v1/models/tiny-gpt2/level", json={"level": "resident", "wait": True}
        )
        assert r.status_code == 200, r.text
        await page.wait_for_selector(
            '[data-cell="tiny-gpt2|edge-a"] .cell[data-level="resident"]', timeout=10_000
        )

        # a failed model shows its reason
        r = await agents["edge-b"].put(
            "/v1/models/tiny-llama/level", json={"level": "resident", "wait": True}
        )
        assert r.status_code >= 400 or r.json().get("state") == "failed", r.text
        failed = page.locator('[data-cell="tiny-llama|edge-b"] .cell[data-state="failed"]')
        await failed.wait_for(timeout=10_000)
        text = await failed.text_content()
        assert text is not None and text.startswith("failed: ") and "load" in text

        # the operator's pin and priority show in the grid once a plan holds them
        r = await o.put("/v1/pins/edge-a/tiny-sd", json={"level": "cached"})
        assert r.status_code == 200, r.text
        r = await o.put("/v1/priorities/tiny-sd", json={"priority": "high"})
        assert r.status_code == 200, r.text
        pinned = '[data-cell="tiny-sd|edge-a"] [data-pin="cached"]'
        await page.wait_for_selector(pinned, timeout=20_000)
        await page.wait_for_selector('tr[data-model="tiny-sd"] [data-priority="high"]')

        # the what-if panel plans with the rates given
        await page.fill("#whatif-rates", json.dumps({"tiny-gpt2": 5.0}))
        await page.select_option("#whatif-algorithm", "exact")
        await page.click("#whatif-run")
        row = page.locator('#whatif-result tr[data-whatif="tiny-gpt2"]')
        await row.wait_for(timeout=20_000)
        head = await page.text_content("#whatif-result p")
        assert head is not None and head.startswith("exact: cost ")
        assert (await o.get("/v1/placement")).json()["trigger"] != "what-if"  # no side effect

        shot = Path(os.environ.get("GENEDGE_DASHBOARD_PNG", tmp_path / "dashboard.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


async def test_the_page_is_open_but_holds_no_data(tmp_path: Path) -> None:
    async with serving(create_orchestrator(orch_settings(tmp_path))) as o:
        r = await o.get("/ui/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "connect-src 'self'" in r.headers["content-security-policy"]
        # nothing external: no remote script, style, image or fetch (the SVG namespace URI
        # is a name, not a request)
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?https?://""", r.text)
        assert not re.search(r"""(fetch|api)\(\s*["'`]https?://""", r.text)
        assert (await o.get("/ui", follow_redirects=False)).status_code == 307
        assert (await o.get("/v1/placement/history")).status_code == 401  # the data is not
