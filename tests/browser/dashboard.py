"""Drives Debian's chromium, headless, over the DevTools protocol against the cluster
map that `tinykube ctl dashboard` serves: loads the page, waits until it has drawn
what is expected, optionally scales a deployment and times how long the new pods take
to appear (no reload), reads the JS heap, and keeps a screenshot. It prints what it saw
as one JSON object; the Rust test that runs it decides what passes.

Only the standard library and websocket-client (which the official Python client
brings) are used.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Page:
    """One page target: calls, and the events that arrive meanwhile."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.errors = []
        self.requests = []

    def _event(self, m):
        method, p = m.get("method"), m.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in p.get("args", [])]
            self.errors.append("console: " + " ".join(str(a) for a in args))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append("log: %s %s" % (e.get("text"), e.get("url", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))

    def call(self, method, params=None):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            self._event(m)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return r.get("result", {}).get("value")

    def wait(self, expr, timeout):
        end = time.time() + timeout
        while time.time() < end:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.05)
        return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--nodes", type=int, default=0, help="wait until this many nodes are drawn")
    ap.add_argument("--pods", type=int, default=0, help="wait until this many pods are drawn")
    ap.add_argument("--scale", help="deployment to scale (kubectl, KUBECONFIG from the environment)")
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--click", help="a pod (ns/name) to click; its inspect must show its uid")
    a = ap.parse_args()

    port = free_port()
    profile = tempfile.mkdtemp(prefix="tk-chromium-")
    chromium = subprocess.Popen(
        [a.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--user-data-dir=" + profile, "--remote-debugging-port=%d" % port,
         "--remote-allow-origins=*", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    try:
        targets = None
        # Chromium's first start can take long on a loaded two-core machine.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not targets:
            raise RuntimeError("chromium did not open its DevTools port")
        page = Page(targets[0]["webSocketDebuggerUrl"])
        for d in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            page.call(d)
        t0 = time.time()
        page.call("Page.navigate", {"url": a.url})
        page.wait("!!(window.tinykube && window.tinykube.drawn)", 30)
        out["first_draw_ms"] = page.eval("window.tinykube && window.tinykube.firstDrawMs")
        drawn = page.wait(
            "document.querySelectorAll('[data-kind=node]').length >= %d && "
            "document.querySelectorAll('[data-kind=pod]').length >= %d" % (a.nodes, a.pods), 30)
        out["all_drawn_s"] = round(time.time() - t0, 3) if drawn else None
        out["nodes"] = page.eval("[...document.querySelectorAll('[data-kind=node]')].map(e => e.dataset.name)")
        out["pods"] = page.eval("[...document.querySelectorAll('[data-kind=pod]')].map(e => e.dataset.name)")
        out["services"] = page.eval("[...document.querySelectorAll('[data-kind=service]')].map(e => e.dataset.name)")
        if a.scale:
            count = ("[...document.querySelectorAll('[data-kind=pod]')]"
                     ".filter(e => e.dataset.name.startsWith('default/%s-')).length" % a.scale)
            before = page.eval(count)
            page.eval("window.__noReload = true")
            t = time.time()
            subprocess.run(["kubectl", "scale", "deployment", a.scale, "--replicas=%d" % a.replicas],
                           check=True, stdout=subprocess.DEVNULL)
            seen = page.wait("(%s) >= %d" % (count, a.replicas), 10)
            out["scale"] = {
                "before": before,
                "after": page.eval(count),
                "seconds": round(time.time() - t, 3) if seen else None,
                "reloaded": not page.eval("window.__noReload === true"),
            }
        if a.click:
            page.eval("document.querySelector('[data-kind=pod][data-name=\"%s\"]')"
                      ".dispatchEvent(new MouseEvent('click', {bubbles: true}))" % a.click)
            out["click"] = page.wait(
                "(() => { const t = document.getElementById('side').textContent;"
                " return t.includes('sandbox') && t.includes('namespaces') ? t : null })()", 10)
        time.sleep(2.5)  # one round of counters and usage
        out["heap_used_bytes"] = page.call("Runtime.getHeapUsage").get("usedSize")
        shot = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        os.makedirs(os.path.dirname(os.path.abspath(a.screenshot)), exist_ok=True)
        with open(a.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        page.eval("1")  # drain the last events
        out["console_errors"] = page.errors
        prefix = a.url.rstrip("/")
        out["requests"] = len(page.requests)
        out["foreign_requests"] = [u for u in page.requests
                                   if not (u.startswith(prefix + "/") or u == prefix or u.startswith("data:"))]
    finally:
        chromium.terminate()
        try:
            chromium.wait(10)
        except subprocess.TimeoutExpired:
            chromium.kill()
        shutil.rmtree(profile, ignore_errors=True)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
