"""The web console (`/ui/`) in headless Chromium, driven by Selenium: an admin creates a key that
a member then uses in the playground, the admin disables it and the member is refused; a slow
background job shows progress; the key stays out of the URL and cookies; a phone-sized window
can use the playground; and a screenshot of every view (CI artefacts, in
`target/console-screenshots/`).

Every browser's console log is read at the end of its test: a CSP violation, an uncaught error
or a console file that fails to load fails the test.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from console_support import (
    ADMIN_VIEWS,
    GENERATION_TIMEOUT_S,
    MEMBER_VIEWS,
    Console,
    csp_directives,
    gateway_origin,
    http_get,
    new_driver,
)
from served import CLIENT_KEY, OwnSimulator, ServedGateway, gateway_config

REPO_ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO_ROOT / "target" / "console-screenshots"
# The demo's admin key (`imagegate demo` prints it as `admin_key`).
DEMO_ADMIN_KEY = "sk-imagegate-demo-admin"
PRICE = re.compile(r"\$\s?\d+(\.\d+)?")
PHONE = (375, 812)
ALL_RECTS = "return [...document.querySelectorAll('#usage-chart rect')].map((r) => ({...r.dataset}));"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def prompt(text: str) -> str:
    """A prompt made unique per call, so no cache or dedup answers it."""
    return f"{text} #{uuid.uuid4().hex[:8]}"


def _binary() -> Path:
    raw = Path(os.environ.get("IMAGEGATE_BIN", "target/debug/imagegate"))
    path = raw if raw.is_absolute() else REPO_ROOT / raw
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"gateway binary not found or not executable: {path} (set IMAGEGATE_BIN)",
                    pytrace=False)
    return path


@pytest.fixture
def browsers(request):
    """`browsers(origin, width=…, height=…, phone=…)` opens a headless Chromium on the console of
    the gateway at `origin`. After the test each browser's last state is saved as a screenshot
    (`target/console-screenshots/last/`), its console log is checked and it is closed."""
    opened: list[Console] = []

    def make(origin: str, width: int = 1280, height: int = 900, phone: bool = False) -> Console:
        console = Console(new_driver(width, height, phone=phone), origin)
        opened.append(console)
        return console

    yield make
    problems = []
    for i, console in enumerate(opened):
        try:
            console.screenshot(SCREENSHOTS / "last" / f"{request.node.name}-{i}.png", full_page=False)
        except Exception:
            pass
        try:
            console.assert_clean()
        except AssertionError as e:
            problems.append(f"browser {i}: {e}")
        finally:
            console.driver.quit()
    assert not problems, "\n".join(problems)


def generate(console: Console, model: str, text: str) -> None:
    """Fills the playground for `model`, checks the price shows before sending, and submits."""
    console.show("playground")
    console.fill("#pg-prompt", prompt(text))
    console.select("#pg-model", model)
    console.wait_text(
        "#pg-quote",
        lambda t: bool(PRICE.search(t)) and model in t,
        f"a price naming {model} (e.g. `$0.01 · {model}`) before sending",
    )
    assert not console.find_all("#pg-results img"), "#pg-results holds an image before sending"
    console.click("#pg-submit")


def create_key(console: Console, key_id: str, **fields: str) -> str:
    """Creates a key in the keys view; returns its secret (`#key-secret`)."""
    console.show("keys")
    console.fill("#key-id", key_id)
    for name, value in fields.items():
        console.fill(f"#key-{name.replace('_', '-')}", value)
    console.click("#key-create-submit")
    secret = console.wait_text("#key-secret", lambda t: t.startswith("sk-"), "a secret (`sk-…`)")
    console.wait_visible(f'#keys-table tr[data-key-id="{key_id}"]')
    return secret


def key_status(console: Console, key_id: str) -> str:
    return console.text(f'#keys-table tr[data-key-id="{key_id}"] .key-status')


def key_action(console: Console, key_id: str, action: str, status: str) -> None:
    """Clicks `action` on the key's row (accepting a confirmation if the console asks) and waits
    for its `.key-status` to read `status`."""
    console.click(f'#keys-table tr[data-key-id="{key_id}"] [data-action="{action}"]')

    def done(_):
        console.accept_alert_if_any()
        return key_status(console, key_id) == status

    console.wait(done, lambda: f"key {key_id}'s .key-status is not {status!r} after {action}")


def refused_as_disabled(text: str) -> bool:
    t = text.lower()
    return "disabled" in t or "invalid_api_key" in t


# ------------------------------------------------------------------------------------------------
# 1. The whole story.
# ------------------------------------------------------------------------------------------------


def test_admin_creates_a_key_the_member_uses_and_the_admin_disables(demo, browsers):
    """An admin signs in, creates a key with a monthly budget and copies its secret; a member
    signs in with it, sees the playground quote sparkpix's price before sending, generates and
    sees the image, its cost and the model that served it; the admin disables the key; the
    member's open session and a new sign-in are both refused; the usage chart shows today's
    cost and the spend view the key."""
    origin = gateway_origin(demo.gateway_url)
    console = browsers(origin)
    key_id = unique("ui-story")

    # Admin: the admin views only; create the key.
    console.open()
    console.grant_clipboard()
    console.sign_in(DEMO_ADMIN_KEY)
    assert set(console.nav_views()) == set(ADMIN_VIEWS), console.nav_views()
    secret = create_key(console, key_id, name="Story key", monthly_budget="5")
    console.wait(lambda _: key_status(console, key_id) == "enabled", f"key {key_id} is not shown enabled")

    # Copy the secret: the confirmation shows, and the clipboard holds it where readable.
    assert not console.displayed("#key-secret-copied"), "#key-secret-copied shows before copying"
    console.click("#key-secret-copy")
    console.wait_visible("#key-secret-copied")
    clipboard = console.read_clipboard()
    if clipboard is not None:
        assert clipboard == secret, f"the clipboard holds {clipboard!r}, not the secret"
    console.sign_out()

    # Member: the member views only; the price before sending, then the image.
    console.sign_in(secret)
    assert set(console.nav_views()) == set(MEMBER_VIEWS), console.nav_views()
    generate(console, "sparkpix", "a lighthouse at dusk")
    image = console.wait_image()
    assert image["src"].startswith("data:image/"), f"the result is not a data URL: {image}"
    console.wait_text("#pg-cost", lambda t: bool(PRICE.search(t)), "a cost in dollars")
    console.wait_text("#pg-served", lambda t: "sparkpix" in t, "the serving model (sparkpix)")
    console.wait_text("#pg-time", lambda t: bool(re.search(r"\d", t)), "the time taken")

    # The member's own page shows the key's monthly budget.
    console.show("me")
    console.wait_text("#me-limits")
    console.wait_text("#me-budget", lambda t: bool(re.search(r"\b5(\.0+)?\b", t)), "the $5 budget")

    # A second browser keeps a member session open across the disabling.
    member = browsers(origin)
    member.open()
    member.sign_in(secret)
    member.show("playground")
    console.sign_out()

    # Admin: the spend view lists the key; disable it.
    console.sign_in(DEMO_ADMIN_KEY)
    console.show("spend")
    console.wait_visible(f'#spend-keys [data-id="{key_id}"]')
    console.show("keys")
    console.wait_visible(f'#keys-table tr[data-key-id="{key_id}"]')
    # The secret is shown once: not again to whoever signs in next (checked at the end).
    secret_shown_again = any(secret in e.text for e in console.find_all("#key-secret") if e.is_displayed())
    key_action(console, key_id, "disable", "disabled")

    # The usage chart: a bar for today with a cost, and for sparkpix when grouped by model.
    console.show("usage")
    console.select("#usage-group", "model")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")

    def sparkpix_today(_):
        return console.js(
            """
            return [...document.querySelectorAll('#usage-chart rect[data-day]')]
              .filter((r) => r.dataset.day === arguments[0] && r.dataset.series === 'sparkpix'
                             && parseFloat(r.dataset.cost) > 0)
              .map((r) => ({cost: r.dataset.cost, images: r.dataset.images}));
            """,
            today,
        )

    bars = console.wait(
        sparkpix_today,
        lambda: f"no #usage-chart rect with data-day={today}, data-series=sparkpix and data-cost > 0; "
        f"rects: {console.js(ALL_RECTS)}",
    )
    assert int(bars[0]["images"] or 0) >= 1, bars
    console.wait_text("#usage-total", lambda t: bool(PRICE.search(t)), "a total in dollars")

    # The member's still-open session: the next request is refused.
    member.fill("#pg-prompt", prompt("after the key was disabled"))
    member.select("#pg-model", "sparkpix")
    member.click("#pg-submit")
    error = member.wait_text("#pg-error", refused_as_disabled, "a refusal naming the disabled key")
    assert not member.find_all("#pg-results img"), "an image arrived for a disabled key"

    # A new sign-in with the key is refused too (at sign-in, or at the first request).
    console.sign_out()
    console.try_sign_in(secret)
    console.wait(
        lambda _: console._signin_error() or console.displayed("#nav"),
        "signing in with the disabled key showed neither #signin-error nor the nav",
    )
    if console.displayed("#nav"):
        generate(console, "sparkpix", "a new session with the disabled key")
        error = console.wait_text("#pg-error", refused_as_disabled, "a refusal naming the disabled key")
    else:
        error = console.wait_signin_error()
        assert refused_as_disabled(error), f"#signin-error does not name the disabled key: {error!r}"

    assert not secret_shown_again, (
        "#key-secret still showed the new key's secret after the admin signed out and in again"
    )


# ------------------------------------------------------------------------------------------------
# 2. A slow background job.
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def slow_gateway(tmp_path):
    """`imagegate serve` in front of a simulator at time scale 0.2: gpt-image-2-beta (15–40 s
    on the platform, asynchronous) takes 3–8 s; the gateway polls it every second."""
    binary = _binary()
    sim = OwnSimulator(binary, tmp_path, time_scale=0.2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "imagegate.toml"
    config.write_text(gateway_config(
        sim=sim,
        data_dir=data_dir,
        models={"gpt-image-2-beta": {"first_poll_delay": "10ms", "poll_interval": "1s"}},
    ))
    gateway = ServedGateway(binary, config, tmp_path)
    try:
        yield gateway.start()
    finally:
        gateway.stop()
        sim.child.terminate()


def test_a_slow_job_shows_progress_before_its_image(slow_gateway, browsers):
    """A gpt-image-2-beta job of a few seconds: `#pg-status` shows progress while it runs, before
    any image is in `#pg-results`, and the image arrives in the end."""
    console = browsers(gateway_origin(slow_gateway.base_url))
    console.open()
    console.sign_in(CLIENT_KEY)
    generate(console, "gpt-image-2-beta", "a slow watercolour harbour")

    # Every status text shown until the image arrives, in order.
    statuses: list[str] = []

    def image_arrived(_):
        errors = [e.text for e in console.find_all("#pg-error") if e.is_displayed() and e.text.strip()]
        assert not errors, f"the playground showed #pg-error: {errors[0]!r} (statuses seen: {statuses})"
        image = console.first_image_loaded()
        if image or console.find_all("#pg-results img"):
            return image
        status = console.find("#pg-status")
        text = status.text.strip() if status.is_displayed() else ""
        if text and (not statuses or statuses[-1] != text):
            statuses.append(text)
        return None

    image = console.wait(image_arrived, lambda: f"no image; statuses seen: {statuses}",
                         timeout=GENERATION_TIMEOUT_S)
    assert image["naturalWidth"] > 0, image
    console.wait_text("#pg-served", lambda t: "gpt-image-2-beta" in t, "the serving model")
    # Progress, not one fixed message: the status changed while the job ran.
    assert len(statuses) >= 2, f"#pg-status did not change while the job ran: {statuses}"


# ------------------------------------------------------------------------------------------------
# 3. Security.
# ------------------------------------------------------------------------------------------------


def test_the_key_stays_in_session_storage_under_a_strict_csp(demo, browsers):
    """`/ui/` is served with a CSP whose `default-src` is `'self'`; a wrong key is refused with
    `#signin-error`; a signed-in key is in `sessionStorage` only: not in the URL, a cookie or
    `localStorage`."""
    origin = gateway_origin(demo.gateway_url)
    status, headers, body = http_get(origin + "/ui/")
    assert status == 200, (status, body[:300])
    assert "text/html" in headers.get("content-type", ""), headers
    csp = headers.get("content-security-policy")
    assert csp, f"/ui/ has no Content-Security-Policy header: {headers}"
    directives = csp_directives(csp)
    assert directives.get("default-src") == ["'self'"], f"default-src is not 'self': {csp}"
    for directive in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in directives.get(directive, []), f"{directive} allows inline: {csp}"
        assert "'unsafe-eval'" not in directives.get(directive, []), f"{directive} allows eval: {csp}"

    console = browsers(origin)
    console.open()

    # A wrong key: an error, no nav, nothing stored.
    console.try_sign_in("sk-not-a-key-of-this-gateway-0123456789")
    error = console.wait_signin_error()
    assert not console.displayed("#nav"), "the nav shows after a wrong key"
    assert "sk-not-a-key" not in error, f"#signin-error echoes the key: {error!r}"

    key = demo.api_key
    console.sign_in(key)
    for view in MEMBER_VIEWS:
        console.show(view)
        assert key not in console.driver.current_url, console.driver.current_url
    state = console.js(
        """
        const dump = (s) => Object.fromEntries(Object.keys(s).map((k) => [k, s.getItem(k)]));
        return {cookie: document.cookie, session: dump(sessionStorage), local: dump(localStorage),
                url: location.href, title: document.title, name: window.name};
        """
    )
    assert key not in state["url"], state
    assert key not in state["cookie"], f"the key is in document.cookie: {state['cookie']!r}"
    assert not any(key in (v or "") for v in state["local"].values()), f"the key is in localStorage: {state['local']}"
    assert key not in state["name"] and key not in state["title"], state
    assert any(key in (v or "") for v in state["session"].values()), (
        f"the key is not in sessionStorage: {list(state['session'])}"
    )
    assert key not in console.driver.page_source, "the key is written into the page"

    # Signing out forgets it.
    console.sign_out()
    session = console.js("return Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k));")
    assert not any(key in (v or "") for v in session), "the key stays in sessionStorage after signing out"


# ------------------------------------------------------------------------------------------------
# 4. Phone width.
# ------------------------------------------------------------------------------------------------


def no_horizontal_overflow(console: Console) -> dict:
    sizes = console.js(
        "return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,"
        " bodyScrollWidth: document.body.scrollWidth};"
    )
    assert sizes["scrollWidth"] <= sizes["innerWidth"], f"the page overflows sideways: {sizes}"
    return sizes


def test_the_playground_fits_a_phone(demo, browsers):
    """At 375×812 (a phone, mobile viewport): signing in and the playground work, the page never
    scrolls sideways, the form's controls fit the width, and the image fits too."""
    console = browsers(gateway_origin(demo.gateway_url), *PHONE, phone=True)
    console.open()
    no_horizontal_overflow(console)
    console.sign_in(demo.api_key)
    console.show("playground")
    no_horizontal_overflow(console)
    width = console.js("return window.innerWidth;")
    assert width == PHONE[0], f"the viewport is {width} px wide, not a phone's {PHONE[0]}"
    for css in ("#pg-prompt", "#pg-model", "#pg-size", "#pg-quality", "#pg-n", "#pg-submit", "#nav", "#signout"):
        box = console.js("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                         " return {left: r.left, right: r.right, width: r.width};", css)
        assert box["width"] > 0 and box["left"] >= 0 and box["right"] <= width + 0.5, f"{css} does not fit: {box}"

    generate(console, "sparkpix", "a phone-sized lighthouse")
    image = console.wait_image()
    assert image["shownWidth"] <= width, f"the image is wider than the screen: {image}"
    no_horizontal_overflow(console)
    console.wait_text("#pg-cost", lambda t: bool(PRICE.search(t)), "a cost in dollars")
    console.screenshot(SCREENSHOTS / "phone-playground.png")
    console.show("me")
    no_horizontal_overflow(console)
    console.screenshot(SCREENSHOTS / "phone-me.png")


# ------------------------------------------------------------------------------------------------
# 5. Screenshots of every view.
# ------------------------------------------------------------------------------------------------


def test_screenshots_of_every_view(demo, browsers):
    """A full-page screenshot of every view, with content in each (a team created, a key and
    its spend, usage, models, an image in the playground), into `target/console-screenshots/`."""
    console = browsers(gateway_origin(demo.gateway_url))
    shots: list[Path] = []

    def shot(name: str) -> None:
        shots.append(console.screenshot(SCREENSHOTS / f"{name}.png"))

    console.open()
    shot("01-signin")

    # Member first, so usage has a request to show.
    console.sign_in(demo.api_key)
    generate(console, "sparkpix", "a screenshot of a lighthouse")
    console.wait_image()
    console.wait_text("#pg-cost", lambda t: bool(PRICE.search(t)), "a cost in dollars")
    shot("07-playground")
    console.show("me")
    console.wait_text("#me-limits")
    shot("08-me")
    console.sign_out()

    console.sign_in(DEMO_ADMIN_KEY)
    team_id = unique("ui-team")
    console.show("teams")
    console.fill("#team-id", team_id)
    console.fill("#team-name", "Design")
    console.fill("#team-monthly-budget", "50")
    console.fill("#team-rpm", "60")
    console.click("#team-create-submit")
    console.wait_visible(f'#teams-table tr[data-team-id="{team_id}"]')
    create_key(console, unique("ui-shot"), name="Screenshot key", team=team_id, monthly_budget="10",
               rpm="30", models="sparkpix, gpt-image-2-lite")
    shot("02-keys")
    console.show("teams")
    console.wait_visible(f'#teams-table tr[data-team-id="{team_id}"]')
    shot("03-teams")
    console.show("spend")
    console.wait_visible(f'#spend-teams [data-id="{team_id}"]')
    shot("04-spend")
    console.show("usage")
    console.wait(lambda _: console.find_all("#usage-chart rect[data-day]"), "the usage chart has no bars")
    shot("05-usage")
    console.show("models")
    circuits = console.wait(
        lambda _: [c.text.strip() for c in console.find_all("#models-table tr[data-model] .circuit")],
        "#models-table has no rows with a .circuit",
    )
    assert all(circuits), f"a model's .circuit is empty: {circuits}"
    console.wait_visible("#upstream-keys-table")
    shot("06-models")

    for path in shots:
        assert path.stat().st_size > 1000, f"{path} is (almost) empty"
    print("console screenshots:\n  " + "\n  ".join(str(p) for p in shots))
