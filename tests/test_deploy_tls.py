"""The TLS front (deploy/nginx/domain-lm.conf) under a real nginx: TLS in, plain HTTP to the service,
/metrics not published, client headers forwarded. Skips when nginx is not installed
(`apt-get install nginx-light`)."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "deploy" / "nginx" / "domain-lm.conf"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Backend(http.server.BaseHTTPRequestHandler):
    """Stands in for the service: echoes what it received."""

    def _reply(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"path": self.path, "method": self.command, "headers": dict(self.headers),
                           "body": self.rfile.read(n).decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def tls_proxy(tmp_path):
    nginx = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)
    if not nginx or not shutil.which("openssl"):
        pytest.skip("nginx/openssl not installed (apt-get install nginx-light)")
    version = subprocess.run([str(nginx), "-v"], capture_output=True, text=True).stderr
    major, minor = map(int, re.search(r"nginx/(\d+)\.(\d+)", version).groups())

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=domain-lm.test",
                    "-addext", "subjectAltName=DNS:domain-lm.test", "-keyout", str(tls / "server.key"), "-out", str(tls / "server.crt")],
                   check=True, capture_output=True)
    port = _port()
    conf = CONF.read_text()
    # The only edits: where the service and the certificate are, and the port (as for bare metal).
    conf = conf.replace("server domain-lm:8000;", f"server 127.0.0.1:{backend.server_address[1]};")
    conf = conf.replace("/etc/nginx/tls", str(tls)).replace("listen 8443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    if (major, minor) < (1, 25):  # `http2 on;` arrived in nginx 1.25.1
        conf = conf.replace("    http2 on;\n", "").replace(f"listen 127.0.0.1:{port} ssl;", f"listen 127.0.0.1:{port} ssl http2;")
    (tmp_path / "site.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\ndaemon off;\nevents {{}}\nhttp {{\n  access_log off;\n"
        + "".join(f"  {k}_temp_path {tmp_path}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    check = subprocess.run([str(nginx), "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([str(nginx), "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    ctx = ssl.create_default_context(cafile=str(tls / "server.crt"))
    deadline = time.time() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "nginx did not listen"
        time.sleep(0.1)
    try:
        yield port, ctx
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.shutdown()


def _get(port: int, ctx: ssl.SSLContext, path: str, **kw):
    # Connect to 127.0.0.1 but verify the certificate for domain-lm.test (what --resolve does in curl).
    class _Conn(urllib.request.HTTPSHandler):
        def https_open(self, req):
            def factory(host, **k):
                conn = http.client.HTTPSConnection("domain-lm.test", port, context=ctx, **k)
                conn._create_connection = lambda addr, *a, **kk: socket.create_connection(("127.0.0.1", port), *a, **kk)
                return conn

            return self.do_open(factory, req)

    opener = urllib.request.build_opener(_Conn())
    req = urllib.request.Request(f"https://domain-lm.test:{port}{path}", **kw)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_tls_front_proxies_to_the_service(tls_proxy):
    port, ctx = tls_proxy
    status, headers, body = _get(port, ctx, "/v1/tasks/sentiment", data=b'{"input": {"text": "x"}}', method="POST",
                                 headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/v1/tasks/sentiment" and seen["method"] == "POST" and seen["body"] == '{"input": {"text": "x"}}'
    assert seen["headers"]["Authorization"] == "Bearer k"  # the API key reaches the service
    assert seen["headers"]["X-Forwarded-Proto"] == "https" and seen["headers"].get("X-Request-ID")
    assert "max-age=" in headers["Strict-Transport-Security"]


def test_metrics_are_not_published_through_the_proxy(tls_proxy):
    port, ctx = tls_proxy
    assert _get(port, ctx, "/metrics")[0] == 404
    assert _get(port, ctx, "/healthz")[0] == 200


def test_plain_http_is_not_served(tls_proxy):
    port, _ = tls_proxy
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()

