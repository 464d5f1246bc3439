"""Headless Chromium (Debian's package, `make tools`) driven over the DevTools protocol on a pipe.

No WebDriver and no Python dependency: Chromium's --remote-debugging-pipe reads NUL-terminated
JSON commands on fd 3 and writes replies and events on fd 4; the few commands the report tests
need (open a file, evaluate, send keys and mouse moves, screenshot) are a page of code.

Run as a script, it regenerates the report screenshots under docs/img/ and prints the size and
open-time measurements docs/audit-report.md quotes:

    PYTHONPATH=scripts .venv/bin/python tests/browser.py
"""
from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

#: Where Debian's `chromium` package puts the browser (`make tools` installs it).
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
#: Flags for a quiet, offline, throwaway browser: no sandbox (CI runs as root), no GPU, no first-run
#: or background traffic (the report must need no network: nothing else may fetch either).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
         "--mute-audio", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page. `with Chromium() as page: page.open(path)`."""

    def __init__(self, exe: str | None = None, width: int = 1600, height: int = 1000, timeout: float = 60):
        self.exe = exe or find_chromium()
        if not self.exe:
            raise FileNotFoundError("chromium is not installed (make tools)")
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0
        self._buf = b""
        self.events: list[dict] = []

    # --- the pipe --------------------------------------------------------------------------------

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="mlbatch-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's fd 3 reads our commands, its fd 4 writes the replies
        def fds():  # via fds >= 10, so that neither dup2 overwrites the other's source
            high_r, high_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
        self.proc = subprocess.Popen(
            [self.exe, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4, to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CDPError("chromium closed the DevTools pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise CDPError(f"{method}: no reply within {self.timeout} s")

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read())
        raise CDPError(f"no {method} within {self.timeout} s")

    # --- what the tests use ------------------------------------------------------------------------

    def open(self, path: Path | str) -> float:
        """Load a local file and wait for its load event: the seconds from navigation to load."""
        self.events.clear()
        started = time.monotonic()
        self.page("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        return time.monotonic() - started

    def js(self, expression: str):
        """Evaluate in the page and return the value (JSON-serialisable results only)."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            problem = result["exceptionDetails"].get("exception", {}).get("description")
            raise CDPError(f"{expression[:80]}...: {problem}")
        return result["result"].get("value")

    def key(self, key: str, code: str | None = None, key_code: int | None = None) -> None:
        """Press and release a key as a user does (trusted events: focus handlers see them)."""
        codes = {"ArrowRight": 39, "ArrowLeft": 37, "ArrowUp": 38, "ArrowDown": 40, "Home": 36, "End": 35,
                 "Tab": 9, "PageDown": 34, "PageUp": 33}
        params = {"key": key, "code": code or key, "windowsVirtualKeyCode": key_code or codes.get(key, 0)}
        self.page("Input.dispatchKeyEvent", type="rawKeyDown", **params)
        self.page("Input.dispatchKeyEvent", type="keyUp", **params)

    def hover(self, x: float, y: float) -> None:
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path | str, full_page: bool = True, clip: dict | None = None) -> int:
        """PNG of the page (the whole page by default, or `clip` {x, y, width, height}): its size in bytes."""
        self.js("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # settle a frame
        if clip is None and full_page:
            size = self.js("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
            clip = {"x": 0, "y": 0, "width": size["w"], "height": size["h"]}
        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": clip.get("scale", 1)}
        data = base64.b64decode(self.page("Page.captureScreenshot", **params)["data"])
        Path(path).write_bytes(data)
        return len(data)


# --- synthetic audits (the size and time measurements) ----------------------------------------------

def synthetic_lines(projects: int, first: "dt.date", days: int, seed: int = 7) -> list[dict]:
    """Audit lines as `mlbatch audit` writes them for `projects` projects over `days` days, one batch per
    window of the grid, mostly SUCCEEDED with every other state sprinkled in (and a few windows holding
    two batches): the shape of a real ledger, for measuring the report, not for asserting the audit."""
    import random
    from mlbatch.extract import lock_key
    from mlbatch.report import grid_minutes

    rnd = random.Random(seed)
    minutes = grid_minutes()
    weights = {"SUCCEEDED": 0.955, "IN_PROGRESS": 0.004, "STUCK": 0.004, "FAILED": 0.012, "POISONED": 0.004,
               "MISSING": 0.015, "UNKNOWN_STATUS": 0.002, "COLLISION": 0.004}
    states, cum = list(weights), list(weights.values())
    arn = "arn:aws:states:eu-west-1:123456789012:execution:mlbatch-prod-Pipeline-4Jk2sLq9Xw1e:"
    lines = []
    for p in range(projects):
        project = f"project-{p:02d}" if projects > 1 else "traffic-anomaly"
        for d in range(days):
            day = first + dt.timedelta(d)
            for hour in range(24):
                for minute in minutes:
                    start = f"{day.isoformat()}T{hour:02d}:{minute:02d}:00Z"
                    end = f"{day.isoformat()}T{hour:02d}:{minute + rnd.randint(2, 14):02d}:{rnd.randint(0, 59):02d}Z"
                    state = rnd.choices(states, cum)[0]
                    batches = 2 if state == "COLLISION" else 1
                    for b in range(batches):
                        mb = f"mb-{day:%Y%m%d}-{hour:02d}{minute:02d}-{b}"
                        unit = {"project_name": project, "org1": "acme", "org2": "netsec", "mini_batch_id": mb,
                                "mini_batch_s3_prefix": f"s3://acme-ingest/acme/netsec/{project}/{day:%Y/%m/%d}/{mb}/",
                                "feature_spec_version": "fs-2024-06", "batch_start_ts_iso": start,
                                "batch_end_ts_iso": end, "source": "backfill"}
                        line = {**unit, "state": state if b == 1 or state != "COLLISION" else "SUCCEEDED",
                                "lock_key": lock_key(unit)}
                        if line["state"] != "MISSING":
                            line.update(status={"SUCCEEDED": "SUCCEEDED", "COLLISION": "SUCCEEDED", "FAILED": "FAILED",
                                                "POISONED": "FAILED", "UNKNOWN_STATUS": "DONE"}.get(line["state"],
                                                                                                   "IN_PROGRESS"),
                                        attempts=1, updated_at=end.replace("Z", ".412Z"),
                                        pipeline_execution_arn=arn + f"{mb}-{rnd.getrandbits(64):016x}")
                        if line["state"] in ("FAILED", "POISONED"):
                            line.update(attempts=2 if line["state"] == "FAILED" else 3, error="Pipeline.BuildFailed",
                                        cause="SageMaker processing job mlbatch-build-... failed: ClientError: "
                                              "AlgorithmError: exit code 1")
                        if line["state"] == "STUCK":
                            line["pipeline_status"] = "SUCCEEDED"
                        if line["state"] == "COLLISION":
                            line["held_by_mini_batch_id"] = mb[:-1] + "0"
                        line["healable"] = line["state"] in ("MISSING", "FAILED", "STUCK")
                        lines.append(line)
    return lines


def synthetic_summary(lines: list[dict]) -> dict:
    from collections import Counter
    return {"units": len(lines), "states": dict(Counter(line["state"] for line in lines))}


# --- the docs' screenshots and numbers --------------------------------------------------------------

def _report(lines: list[dict], first: "dt.date", last: "dt.date", path: Path, title: str = "mlbatch audit") -> dict:
    from mlbatch.report import Report
    started = time.perf_counter()
    report = Report(context={"bucket": "acme-ingest", "lock_table": "mlbatch-prod-Locks",
                             "audited_at": f"{last + dt.timedelta(1)} 06:00 UTC"})
    for line in lines:
        report.add(line)
    size = report.write(str(path), synthetic_summary(lines), first, last, title)
    return {"units": len(lines), "bytes": size, "write_s": time.perf_counter() - started}


def _small_lines() -> list[dict]:
    """Three projects over three days with every state in view (a busier picture than a real week)."""
    import random
    lines = synthetic_lines(3, dt.date(2025, 3, 3), 3, seed=11)
    rnd = random.Random(3)
    names = ["traffic-anomaly", "dns-exfiltration", "login-risk"]
    for line in lines:
        p = int(line["project_name"][-2:])
        line["project_name"] = names[p]
        line["mini_batch_s3_prefix"] = line["mini_batch_s3_prefix"].replace(f"project-{p:02d}", names[p])
        line["lock_key"] = line["lock_key"].replace(f"project-{p:02d}", names[p])
    # a morning outage on one project: a run of MISSING windows, then a stuck one; recent ones still running
    for line in lines:
        start = line["batch_start_ts_iso"]
        if line["project_name"] == "dns-exfiltration" and "2025-03-04T06:" <= start < "2025-03-04T09:":
            for k in ("status", "attempts", "updated_at", "pipeline_execution_arn", "error", "cause"):
                line.pop(k, None)
            line.update(state="MISSING", healable=True)
        if start >= "2025-03-05T22:30" and line["state"] == "SUCCEEDED" and rnd.random() < 0.8:
            line.update(state="IN_PROGRESS", status="IN_PROGRESS")
    for line in lines:
        if line["project_name"] == "login-risk" and line["batch_start_ts_iso"] == "2025-03-04T13:08:00Z":
            line.update(state="STUCK", status="IN_PROGRESS", pipeline_status="SUCCEEDED", healable=True)
    ghost = [l for l in synthetic_lines(1, dt.date(2025, 3, 5), 1, seed=5)[:6]]
    for line in ghost:
        for k in ("feature_spec_version", "lock_key", "status", "attempts", "updated_at", "pipeline_execution_arn",
                  "error", "cause"):
            line.pop(k, None)
        line.update(project_name="new-project", state="UNKNOWN_PROJECT", healable=False,
                    mini_batch_s3_prefix=line["mini_batch_s3_prefix"].replace("traffic-anomaly", "new-project"))
    return lines + ghost


def _timings(browser: Chromium, path: Path, runs: int = 5) -> dict:
    loads, paints = [], []
    for _ in range(runs):
        loads.append(browser.open(path))
        paint = browser.js("""new Promise(done => {
            new PerformanceObserver(l => { for (const e of l.getEntries())
              if (e.name === 'first-contentful-paint') done(e.startTime); }).observe({type: 'paint', buffered: true});
            setTimeout(() => done(null), 10000); })""")
        paints.append(paint / 1000 if paint is not None else float("nan"))
    loads.sort(), paints.sort()
    return {"load_median_s": loads[runs // 2], "load_min_s": loads[0], "fcp_median_s": paints[runs // 2],
            "fcp_min_s": paints[0]}


def _click(browser: Chromium, selector: str) -> None:
    box = browser.js(f"""(() => {{ const c = document.querySelector({json.dumps(selector)});
        const r = c.getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()""")
    for kind in ("mousePressed", "mouseReleased"):
        browser.page("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)


def main() -> None:
    from mlbatch.settings import ROOT
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mlbatch-report-"))
    small = _small_lines()
    cases = {
        "small (3 projects x 3 days)": (small, dt.date(2025, 3, 3), dt.date(2025, 3, 5), work / "small.html"),
        "a year of one project": (synthetic_lines(1, dt.date(2025, 1, 1), 365), dt.date(2025, 1, 1),
                                  dt.date(2025, 12, 31), work / "year.html"),
        "20 projects x 7 days": (synthetic_lines(20, dt.date(2025, 3, 3), 7), dt.date(2025, 3, 3),
                                 dt.date(2025, 3, 9), work / "week.html"),
    }
    with Chromium(width=1720, height=1000) as browser:
        print(f"chromium: {browser.page('Runtime.evaluate', expression='navigator.userAgent')['result']['value']}")
        for name, (lines, first, last, path) in cases.items():
            numbers = _report(lines, first, last, path)
            numbers.update(_timings(browser, path))
            print(f"{name}: " + ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v:,}"
                                          for k, v in numbers.items()))
        # the screenshots: a FAILED cell clicked, so the details show its lock and the fix
        browser.open(cases["small (3 projects x 3 days)"][3])
        _click(browser, "table.g td.fa")
        height = browser.js("Math.max(document.querySelector('main').scrollHeight, "
                            "document.getElementById('details').scrollHeight)")
        print("audit-small.png", browser.screenshot(out / "audit-small.png", clip={"x": 0, "y": 0, "width": 1720,
                                                                                  "height": height + 8}))
        # content-visibility keeps off-screen months unrendered: the viewport covers the shot
        browser.page("Emulation.setDeviceMetricsOverride", width=1720, height=1500, deviceScaleFactor=1, mobile=False)
        browser.open(cases["a year of one project"][3])
        _click(browser, "table.g td.po")
        browser.js("window.scrollTo(0, 0)")
        print("audit-year.png", browser.screenshot(out / "audit-year.png", clip={"x": 0, "y": 0, "width": 1720,
                                                                                "height": 1500}))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
