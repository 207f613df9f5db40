#!/usr/bin/env python3
"""Side-by-side proxy benchmark for tokenrelay (started by bench/run.sh; see BENCHMARKS.md).

Scenarios, all against the same upstream (nginx `return 200`, 1 worker, plain and mTLS ports):

    direct        wrk -> upstream (the floor)
    nginx         wrk -> nginx proxy_pass (1 worker, access_log off) -> upstream
    nginx-mtls    wrk -> nginx -> mTLS upstream
    relay         wrk -> tokenrelay, auth = "none" (no signature) -> upstream
    pkjwt         wrk -> tokenrelay, private_key_jwt ES256 -> upstream
    full          wrk -> tokenrelay, private_key_jwt + DPoP ES256 + mTLS -> mTLS upstream
    node          wrk -> Node signing proxy (2x ES256, jose) -> mTLS upstream
    mitmproxy     wrk -> mitmproxy + PyJWT addon (2x ES256) -> mTLS upstream
    https         wrk -> tokenrelay's HTTPS listener (listen_tls), as `full` -> mTLS upstream
    forward       connect_load -> tokenrelay forward mode (CONNECT localhost:PORT, TLS with a leaf
                  from its local CA), as `full` -> mTLS upstream
    mitmproxy-fwd connect_load -> mitmproxy regular (forward) mode + the same addon -> mTLS upstream

wrk cannot send CONNECT: the forward scenarios are driven by `benches/connect_load.rs`
(--connect-load), which prints its figures in the wrk script's format.

Each round starts every proxy afresh, in a rotated order (interleaved rounds), and measures:
idle RSS, req/s at c=32, p50/p99 at c=1, req/s at c=64 and the peak RSS (VmHWM) after it,
and the proxy's CPU per request at c=32 (utime+stime of its process tree from /proc).
Before the rounds, one request per scenario goes to a checking upstream that verifies what
arrived (assertion and proof signatures, mTLS client certificate). The sign cost (one ES256
signature, CPU time) is measured each round by `benches/sign_cost.rs`.

The proxy under test runs on CPU 1, wrk and the upstream on CPU 0 (--no-pin to turn off).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "bench-tools"
TOKEN = '{"access_token":"bench-token","token_type":"DPoP","expires_in":60}'
BODY = "grant_type=client_credentials&scope=read"
PATH = "/b/token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ["direct", "nginx", "nginx-mtls", "relay", "pkjwt", "full", "https", "forward", "node", "mitmproxy",
             "mitmproxy-fwd"]
TOKENRELAY = {"relay", "pkjwt", "full"}
# tokenrelay with the full path's signing behind its HTTPS listener or forward proxy (not run by
# --baseline or --instructions, which drive plain HTTP).
TOKENRELAY_TLS = {"https", "forward"}
# Driven through CONNECT by benches/connect_load.rs: the app talks to the AS by this host name.
CONNECT = {"forward", "mitmproxy-fwd"}
FORWARD_HOST = "localhost"
FORWARD_PATH = "/token"
BASE = "@base"  # suffix: the same tokenrelay scenario run by the --baseline binary (A/B)


def kind(scenario: str) -> str:
    return scenario.split("@")[0]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def run(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def load_result(out: str, who: str) -> dict:
    """The `RESULT {...}` line of wrk's post.lua (or of benches/connect_load.rs, same format)."""
    for line in out.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            r["failed"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            return r
    raise RuntimeError(f"{who} printed no result: {out}")


# ---------------------------------------------------------------------------------------------
# /proc: CPU and memory of a process tree


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of every process in the tree (all threads), in seconds."""
    user = system = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def mem_kib(pid: int, field: str) -> int:
    """Sum of VmRSS or VmHWM over the tree (shared pages count once per process)."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# ---------------------------------------------------------------------------------------------
# Set-up: certificates, configs


def make_pki(d: Path) -> None:
    ext = d / "ext.cnf"
    ext.write_text(
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "[server]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "[client]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
    )

    def key(name: str) -> None:
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(d / name)])

    key("ca.key")
    # `req -x509` cannot take -extfile; self-sign via x509 -req instead.
    run(["openssl", "req", "-new", "-key", str(d / "ca.key"), "-subj", "/CN=tokenrelay bench CA",
         "-out", str(d / "ca.csr")])
    run(["openssl", "x509", "-req", "-in", str(d / "ca.csr"), "-signkey", str(d / "ca.key"), "-days", "7",
         "-extfile", str(ext), "-extensions", "ca", "-out", str(d / "ca.pem")])
    for name, cn in (("server", "localhost"), ("client", "bench-client")):
        key(f"{name}.key")
        run(["openssl", "req", "-new", "-key", str(d / f"{name}.key"), "-subj", f"/CN={cn}",
             "-out", str(d / f"{name}.csr")])
        run(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-set_serial", str(int(time.time() * 1000)), "-days", "7",
             "-extfile", str(ext), "-extensions", name, "-out", str(d / f"{name}.pem")])
    (d / "client-bundle.pem").write_text((d / "client.pem").read_text() + (d / "client.key").read_text())


def nginx_conf(d: Path, name: str, servers: str) -> Path:
    tmp = d / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = d / f"{name}.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{servers}
}}
"""
    )
    return conf


def upstream_conf(d: Path, plain: int, tls: int) -> Path:
    answer = f"default_type application/json; return 200 '{TOKEN}';"
    return nginx_conf(d, "upstream", f"""
    server {{
        listen 127.0.0.1:{plain} reuseport;
        location / {{ {answer} }}
    }}
    server {{
        listen 127.0.0.1:{tls} ssl reuseport;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {d}/ca.pem;
        ssl_verify_client on;
        location / {{ {answer} }}
    }}""")


def nginx_proxy_conf(d: Path, name: str, port: int, upstream_port: int, mtls: bool) -> Path:
    if mtls:
        target = f"""proxy_pass https://up;
            proxy_ssl_certificate {d}/client.pem;
            proxy_ssl_certificate_key {d}/client.key;
            proxy_ssl_trusted_certificate {d}/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;"""
    else:
        target = "proxy_pass http://up;"
    return nginx_conf(d, name, f"""
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {target}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")


def tokenrelay_conf(d: Path, name: str, port: int, upstream: str, kind: str) -> Path:
    """`port` is the listener the scenario uses: `listen`, `listen_tls` (https) or `forward`."""
    route = f'[routes.b]\nprefix = "/b"\nupstream = "{upstream}"\n'
    if kind == "relay":
        route += '[routes.b.client]\nid = "bench"\nauth = "none"\n'
    else:
        route += f'[routes.b.client]\nid = "bench"\nauth = "private_key_jwt"\nkey = "{d}/tr-client.pem"\ncreate = true\n'
    if kind in ("full", "https", "forward"):
        route = route.replace('"\n[routes.b.client]', f'"\ntrust = ["{d}/ca.pem"]\n[routes.b.client]', 1)
        route += f'[routes.b.dpop]\nkey = "{d}/tr-dpop.pem"\ncreate = true\n'
        route += f'[routes.b.mtls]\ncert = "{d}/client.pem"\nkey = "{d}/client.key"\n'
    if kind == "forward":
        # Forward mode: the route claims the upstream's host name (its port only).
        route = route.replace('"\ntrust = [', f'"\nhosts = ["{FORWARD_HOST}"]\ntrust = [', 1)
    proxy = f'listen = "127.0.0.1:{port}"\n'
    if kind in TOKENRELAY_TLS:
        # The plain listener is not used, but always runs: keep it off the default port.
        other = "listen_tls" if kind == "https" else "forward"
        proxy = (f'listen = "127.0.0.1:{free_port()}"\n{other} = "127.0.0.1:{port}"\n'
                 f'ca_cert = "{d}/{name}-ca.pem"\nca_key = "{d}/{name}-ca-key.pem"\n')
    conf = d / f"{name}.toml"
    conf.write_text(f'[proxy]\n{proxy}\n{route}')
    return conf


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A started process (and its children), stopped by pid."""

    def __init__(self, cmd: list[str], cpu: str | None, env: dict | None = None, stdout=subprocess.DEVNULL,
                 log_path: Path | None = None):
        if cpu is not None:
            cmd = ["taskset", "-c", cpu] + cmd
        self.log_file = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=self.log_file, start_new_session=True)
        self.pid = self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait()
        if self.log_file is not subprocess.DEVNULL:
            self.log_file.close()


class Bench:
    def __init__(self, args):
        self.args = args
        # One folder per kind of invocation, so a profile never wipes a run's results.
        mode = "profile" if getattr(args, "profile", False) else (
            "instructions" if getattr(args, "instructions", False) else "run")
        self.dir = ROOT / "target" / f"bench-{mode}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        pin = args.pin and (os.cpu_count() or 1) >= 2
        self.proxy_cpu = "1" if pin else None
        self.load_cpu = "0" if pin else None
        self.binary = Path(args.tokenrelay)
        self.baseline = Path(args.baseline) if args.baseline else None
        self.sign_cost_bin = Path(args.sign_cost) if args.sign_cost else None
        self.connect_load_bin = Path(args.connect_load) if getattr(args, "connect_load", None) else None
        make_pki(self.dir)
        self.up_plain, self.up_tls = free_port(), free_port()
        lua = self.dir / "post.lua"
        lua.write_text(
            f"""wrk.method = "POST"
wrk.body = "{BODY}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,"
    .. "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50\\":%d,\\"p99\\":%d,\\"mean\\":%.1f}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""
        )
        self.lua = lua

    # -- components ---------------------------------------------------------------------------

    def start_upstream(self, plain: int, tls: int) -> Proc:
        conf = upstream_conf(self.dir, plain, tls)
        p = Proc(["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "upstream-error.log")],
                 self.load_cpu)
        wait_port(plain, p.p)
        wait_port(tls, p.p)
        return p

    def start(self, scenario: str, port: int, plain: int, tls: int, wrap: list[str] | None = None
              ) -> tuple[Proc | None, dict]:
        """Starts the proxy of `scenario` on `port` towards the given upstream ports (tokenrelay
        under `wrap`, e.g. valgrind, when given)."""
        d, info = self.dir, {}
        env = {**os.environ}
        if scenario == "direct":
            return None, info
        if scenario in ("nginx", "nginx-mtls"):
            mtls = scenario == "nginx-mtls"
            conf = nginx_proxy_conf(d, scenario, port, tls if mtls else plain, mtls)
            p = Proc(["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / f"{scenario}-error.log")],
                     self.proxy_cpu)
        elif kind(scenario) in TOKENRELAY | TOKENRELAY_TLS:
            k = kind(scenario)
            upstream = f"https://127.0.0.1:{tls}" if k in ("full", "https") else f"http://127.0.0.1:{plain}"
            if k == "forward":
                upstream = f"https://{FORWARD_HOST}:{tls}"
            name = scenario.replace("@", "-")
            conf = tokenrelay_conf(d, name, port, upstream, k)
            env["RUST_LOG"] = "warn"
            binary = self.baseline if scenario.endswith(BASE) else self.binary
            if k in TOKENRELAY_TLS:
                # What an app would run (`eval "$(tokenrelay ca)"`): creates the local CA on the
                # first start (reused by the later ones) and names it; the app trusts it alone.
                ca_env = json.loads(run([str(binary), "ca", "--config", str(conf), "--shell", "json"], env=env))
                info["ca"] = ca_env["NODE_EXTRA_CA_CERTS"]
                if k == "forward":
                    if ca_env.get("https_proxy") != f"http://127.0.0.1:{port}":
                        raise RuntimeError(f"tokenrelay ca: unexpected https_proxy {ca_env.get('https_proxy')!r}")
                    info["target"] = f"{FORWARD_HOST}:{tls}"
            p = Proc((wrap or []) + [str(binary), "run", "--config", str(conf)], self.proxy_cpu, env=env,
                     log_path=d / f"{name}.log")
            info["config"] = conf
            info["binary"] = binary
        elif scenario == "node":
            p = Proc(["node", str(TOOLS / "node" / "proxy.mjs"), str(port), f"https://127.0.0.1:{tls}",
                      str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key")], self.proxy_cpu,
                     stdout=subprocess.PIPE, log_path=d / "node.log")
            line = p.p.stdout.readline().decode()
            if not line.startswith("listening"):
                p.stop()
                raise RuntimeError(f"node proxy did not start: {(d / 'node.log').read_text()}")
            info["jwk"] = json.loads(line.split(" ", 1)[1])
        elif scenario == "mitmproxy":
            env["BENCH_MITM_JWK"] = str(d / "mitm-jwk.json")
            confdir = d / "mitmproxy-conf"
            confdir.mkdir(exist_ok=True)
            p = Proc([str(TOOLS / "venv" / "bin" / "mitmdump"), "-q", "--listen-host", "127.0.0.1",
                      "--listen-port", str(port), "--mode", f"reverse:https://127.0.0.1:{tls}",
                      "-s", str(ROOT / "bench" / "mitm_sign.py"),
                      "--set", f"confdir={confdir}",
                      "--set", f"client_certs={d / 'client-bundle.pem'}",
                      "--set", f"ssl_verify_upstream_trusted_ca={d / 'ca.pem'}",
                      "--set", "termlog_verbosity=error", "--set", "flow_detail=0"],
                     self.proxy_cpu, env=env, log_path=d / "mitmproxy.log")
        elif scenario == "mitmproxy-fwd":
            # Regular mode: an HTTPS_PROXY. Its CA goes to confdir, under the work dir (not ~).
            confdir = d / "mitmproxy-fwd-conf"
            confdir.mkdir(exist_ok=True)
            env["BENCH_MITM_JWK"] = str(d / "mitm-fwd-jwk.json")
            p = Proc([str(TOOLS / "venv" / "bin" / "mitmdump"), "-q", "--listen-host", "127.0.0.1",
                      "--listen-port", str(port), "--mode", "regular",
                      "-s", str(ROOT / "bench" / "mitm_sign.py"),
                      "--set", f"confdir={confdir}",
                      "--set", f"client_certs={d / 'client-bundle.pem'}",
                      "--set", f"ssl_verify_upstream_trusted_ca={d / 'ca.pem'}",
                      "--set", "termlog_verbosity=error", "--set", "flow_detail=0"],
                     self.proxy_cpu, env=env, log_path=d / "mitmproxy-fwd.log")
            info["ca"] = str(confdir / "mitmproxy-ca-cert.pem")
            info["target"] = f"{FORWARD_HOST}:{tls}"
        else:
            raise ValueError(scenario)
        wait_port(port, p.p, timeout=180 if wrap else 60)
        if scenario == "mitmproxy":
            info["jwk"] = json.loads((d / "mitm-jwk.json").read_text())
        if scenario == "mitmproxy-fwd":
            info["jwk"] = json.loads((d / "mitm-fwd-jwk.json").read_text())
            if not Path(info["ca"]).exists():
                p.stop()
                raise RuntimeError(f"mitmproxy wrote no CA to {info['ca']}")
        return p, info

    def driver(self, scenario: str, port: int, info: dict):
        """The load generator for `scenario`'s app side: (connections, seconds) -> result."""
        k = kind(scenario)
        if k in CONNECT:
            return lambda conns, secs: self.connect_load(port, info["target"], info["ca"], conns, secs)
        if k == "https":
            url = f"https://localhost:{port}{PATH}"
        else:
            url = f"http://127.0.0.1:{port}{PATH}"
        return lambda conns, secs: self.wrk(url, conns, secs)

    def wrk(self, url: str, conns: int, secs: float) -> dict:
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(secs))}s", "--timeout", "5s", "-s", str(self.lua), url]
        if self.load_cpu is not None:
            cmd = ["taskset", "-c", self.load_cpu] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60).stdout
        return load_result(out, "wrk")

    def connect_load(self, port: int, target: str, ca: str, conns: int, secs: float) -> dict:
        """benches/connect_load.rs: CONNECT target through the proxy on `port`, TLS trusting `ca`,
        kept-alive POSTs; the same figures as wrk, bounded in time the same way."""
        if not self.connect_load_bin:
            raise RuntimeError("the forward scenarios need --connect-load (bench/run.sh builds it)")
        cmd = [str(self.connect_load_bin), f"127.0.0.1:{port}", target, FORWARD_PATH, str(ca), str(conns),
               str(max(1, round(secs)))]
        if self.load_cpu is not None:
            cmd = ["taskset", "-c", self.load_cpu] + cmd
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
        if done.stderr.strip():
            log("  connect_load: " + done.stderr.strip().replace("\n", "\n  connect_load: "))
        return load_result(done.stdout, "connect_load")

    # -- one scenario, one round --------------------------------------------------------------

    def measure(self, scenario: str) -> dict:
        a = self.args
        port = self.up_plain if scenario == "direct" else free_port()
        proc, info = self.start(scenario, port, self.up_plain, self.up_tls)
        load = self.driver(scenario, port, info)
        try:
            r: dict = {}
            if proc:
                time.sleep(0.3)
                r["idle_kib"] = mem_kib(proc.pid, "VmRSS")
            load(32, a.warmup)
            cpu0 = cpu_seconds(proc.pid) if proc else (0.0, 0.0)
            t = load(32, a.secs)
            cpu1 = cpu_seconds(proc.pid) if proc else (0.0, 0.0)
            r["rps32"] = t["rps"]
            r["failed"] = t["failed"]
            r["requests"] = t["requests"]
            if proc and t["requests"]:
                r["cpu_us"] = (sum(cpu1) - sum(cpu0)) * 1e6 / t["requests"]
                r["sys_us"] = (cpu1[1] - cpu0[1]) * 1e6 / t["requests"]
            cpu0 = cpu_seconds(proc.pid) if proc else (0.0, 0.0)
            lat = load(1, a.lat_secs)
            cpu1 = cpu_seconds(proc.pid) if proc else (0.0, 0.0)
            r["p50"], r["p99"] = lat["p50"], lat["p99"]
            if proc and lat["requests"]:
                # One request at a time: every proxy wakes its peers for every message, so the
                # kernel's share is comparable across proxies of very different throughput.
                r["cpu1_us"] = (sum(cpu1) - sum(cpu0)) * 1e6 / lat["requests"]
            r["failed"] += lat["failed"]
            peak = load(64, a.peak_secs)
            r["rps64"] = peak["rps"]
            r["failed"] += peak["failed"]
            if proc:
                r["peak_kib"] = mem_kib(proc.pid, "VmHWM")
                if proc.p.poll() is not None:
                    raise RuntimeError(f"{scenario} exited during the run")
            return r
        finally:
            if proc:
                proc.stop()

    def sign_cost(self) -> dict | None:
        if not self.sign_cost_bin:
            return None
        cmd = [str(self.sign_cost_bin)]
        if self.proxy_cpu is not None:
            cmd = ["taskset", "-c", self.proxy_cpu] + cmd
        env = {**os.environ, "BENCH_MS": str(int(self.args.sign_ms))}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        return None

    # -- checks: one request per scenario to a verifying upstream ----------------------------

    def verify_all(self, scenarios: list[str]) -> dict[str, str]:
        check = CheckUpstream(self.dir)
        results = {}
        try:
            for s in scenarios:
                port = check.plain_port if s == "direct" else free_port()
                proc, info = self.start(s, port, check.plain_port, check.tls_port)
                try:
                    check.last = None
                    status = self.app_request(s, port, info)
                    results[s] = self.judge(s, status, check.last, info, check.tls_port)
                finally:
                    if proc:
                        proc.stop()
                log(f"  check {s:<13} {results[s]}")
        finally:
            check.stop()
        return results

    @staticmethod
    def app_request(scenario: str, port: int, info: dict) -> int:
        """One token request as the scenario's app side sends it (Python's own HTTP and TLS:
        the proxy's certificate is verified against the CA the scenario's app trusts)."""
        k = kind(scenario)
        if k in CONNECT:
            host, target_port = info["target"].rsplit(":", 1)
            return post_tunnel(port, host, int(target_port), FORWARD_PATH, info["ca"])
        if k == "https":
            return post(f"https://localhost:{port}{PATH}", cafile=info["ca"])
        return post(f"http://127.0.0.1:{port}{PATH}")

    def judge(self, scenario: str, status: int, seen: dict | None, info: dict, tls_port: int) -> str:
        import jwt  # PyJWT: in the bench venv

        s = kind(scenario)

        if status != 200 or seen is None:
            raise RuntimeError(f"{s}: status {status}, upstream saw {'nothing' if seen is None else 'a request'}")
        form = dict(urllib.parse.parse_qsl(seen["body"]))
        if form.get("grant_type") != "client_credentials":
            raise RuntimeError(f"{s}: the app's form did not arrive: {seen['body']!r}")
        wants_mtls = s in ("nginx-mtls", "full", "https", "forward", "node", "mitmproxy", "mitmproxy-fwd")
        if wants_mtls != seen["client_cert"]:
            raise RuntimeError(f"{s}: client certificate presented = {seen['client_cert']}")
        said = ["mTLS client cert"] if wants_mtls else []
        if s in ("direct", "nginx", "nginx-mtls"):
            return "relayed, " + (", ".join(said) or "untouched")
        if s == "relay":
            if form.get("client_id") != "bench" or "client_assertion" in form:
                raise RuntimeError(f"relay: unexpected form {form}")
            return "relayed, client_id added, no signature"
        assertion = form.get("client_assertion")
        if not assertion or form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise RuntimeError(f"{s}: no client assertion")
        if s in TOKENRELAY | TOKENRELAY_TLS:
            jwks = json.loads(run([str(info["binary"]), "jwks", "--config", str(info["config"])]))
            key_jwk = find_jwk(jwks)
        else:
            key_jwk = info["jwk"]
        key = jwt.PyJWK(key_jwk, algorithm="ES256").key
        claims = jwt.decode(assertion, key, algorithms=["ES256"], options={"verify_aud": False})
        if claims.get("iss") != "bench" or claims.get("sub") != "bench":
            raise RuntimeError(f"{s}: assertion claims {claims}")
        said.insert(0, "assertion ES256 verified")
        if s in ("full", "https", "forward", "node", "mitmproxy", "mitmproxy-fwd"):
            proof = seen["headers"].get("dpop")
            if not proof:
                raise RuntimeError(f"{s}: no DPoP proof")
            header = jwt.get_unverified_header(proof)
            if header.get("typ") != "dpop+jwt" or header.get("alg") != "ES256":
                raise RuntimeError(f"{s}: proof header {header}")
            pc = jwt.decode(proof, jwt.PyJWK(header["jwk"], algorithm="ES256").key, algorithms=["ES256"])
            # htu: the URL the AS was called at, as it saw it (RFC 9449 §4.2: no query).
            host = FORWARD_HOST if s in CONNECT else "127.0.0.1"
            htu = f"https://{host}:{tls_port}{seen['path'].split('?')[0]}"
            if pc.get("htm") != "POST" or pc.get("htu") != htu:
                raise RuntimeError(f"{s}: proof claims {pc}, expected htm POST and htu {htu}")
            said.insert(1, f"DPoP proof ES256 verified (htm POST, htu {htu})")
        if s in CONNECT or s == "https":
            said.append("app TLS verified against the proxy's CA")
        return ", ".join(said)


def find_jwk(doc) -> dict:
    """The first public JWK in `tokenrelay jwks` output, wherever it is nested."""
    if isinstance(doc, dict):
        if doc.get("kty") == "EC" and "x" in doc:
            return doc
        for v in doc.values():
            found = find_jwk(v)
            if found:
                return found
    if isinstance(doc, list):
        for v in doc:
            found = find_jwk(v)
            if found:
                return found
    return {}


def post(url: str, cafile: str | None = None) -> int:
    import urllib.request

    req = urllib.request.Request(url, data=BODY.encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    handlers = [urllib.request.ProxyHandler({})]
    if cafile:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def post_tunnel(proxy_port: int, host: str, port: int, path: str, cafile: str) -> int:
    """POST through an HTTPS proxy: CONNECT host:port, TLS (SNI host, `cafile` the only root)."""
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=10,
                                       context=ssl.create_default_context(cafile=cafile))
    conn.set_tunnel(host, port)
    try:
        conn.request("POST", path, body=BODY, headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class CheckUpstream:
    """Plain and mTLS upstream that remembers the last request (headers, body, client cert)."""

    def __init__(self, d: Path):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n).decode()
                cert = isinstance(self.connection, ssl.SSLSocket) and bool(self.connection.getpeercert())
                outer.last = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                              "client_cert": cert, "path": self.path}
                data = TOKEN.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.last = None
        self.plain = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.tls = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "server.pem", d / "server.key")
        ctx.load_verify_locations(d / "ca.pem")
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self.tls.socket = ctx.wrap_socket(self.tls.socket, server_side=True)
        self.plain_port = self.plain.server_address[1]
        self.tls_port = self.tls.server_address[1]
        for srv in (self.plain, self.tls):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(self):
        for srv in (self.plain, self.tls):
            srv.shutdown()
            srv.server_close()


# ---------------------------------------------------------------------------------------------
# Report


def spread(xs, fmt="{:.0f}", scale=1.0):
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "—"
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024

    def version(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    tools = "; ".join([
        version(["nginx", "-v"]).replace("nginx version: ", ""),
        version(["wrk", "-v"]).split(" [")[0],
        "node " + version(["node", "--version"]),
        "mitmproxy " + version([str(TOOLS / "venv" / "bin" / "mitmdump"), "--version"]).split()[-1],
    ])
    return (f"{os.cpu_count()} × {model}, {mem} GiB, Linux {platform.release()}; {tools}")


def report(results: dict, signs: list, args, loads: list, checks: dict, started: float) -> str:
    rows = []
    label = {
        "direct": "direct → upstream (floor)",
        "nginx": "nginx proxy_pass (1 worker)",
        "nginx-mtls": "nginx → mTLS upstream",
        "relay": "tokenrelay relay-only (auth none)",
        "pkjwt": "tokenrelay private_key_jwt ES256",
        "full": "tokenrelay pkjwt + DPoP ES256 + mTLS",
        "node": "Node signing proxy (2× ES256) → mTLS",
        "mitmproxy": "mitmproxy + PyJWT (2× ES256) → mTLS",
        "https": "tokenrelay full path, app over HTTPS (listen_tls)",
        "forward": "tokenrelay forward mode (CONNECT + TLS), full path",
        "mitmproxy-fwd": "mitmproxy regular (forward) mode + PyJWT → mTLS",
    }
    out = []
    rounds = args.rounds
    out.append(f"Machine: {machine()}.")
    out.append(f"Load average during the run: {loads[0]} at start, {loads[-1]} at the end "
               f"(shared with other engineers' compiler jobs). {rounds} interleaved rounds, "
               f"{args.secs:g} s at c=32, {args.lat_secs:g} s at c=1, {args.peak_secs:g} s at c=64 per scenario "
               f"and round; proxy pinned to CPU {1 if args.pin else '—'}, wrk and upstream to CPU "
               f"{0 if args.pin else '—'}. Figures: median (min–max) over rounds. Run took "
               f"{(time.time() - started) / 60:.1f} min.")
    out.append("")
    out.append("| scenario | req/s c=32 | p50 µs c=1 | p99 µs c=1 | proxy CPU µs/req c=32 | … of it kernel | "
               "proxy CPU µs/req c=1 | idle RSS MiB | peak RSS MiB c=64 | req/s c=64 |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in results:
        rs = results[s]
        col = lambda k: [r.get(k) for r in rs]  # noqa: E731
        out.append("| " + " | ".join([
            label[kind(s)] + (" — baseline binary" if s.endswith(BASE) else ""),
            spread(col("rps32")),
            spread(col("p50")),
            spread(col("p99")),
            spread(col("cpu_us"), "{:.1f}"),
            spread(col("sys_us"), "{:.1f}"),
            spread(col("cpu1_us"), "{:.1f}"),
            spread(col("idle_kib"), "{:.1f}", 1 / 1024),
            spread(col("peak_kib"), "{:.1f}", 1 / 1024),
            spread(col("rps64")),
        ]) + " |")
    failed = {s: sum(r.get("failed", 0) for r in rs) for s, rs in results.items()}
    total = {s: sum(r.get("requests", 0) for r in rs) for s, rs in results.items()}
    out.append("")
    out.append("Failed or non-2xx responses: " + ", ".join(f"{s} {failed[s]}" for s in results) +
               f" (of {sum(total.values())} requests at c=32, plus the c=1 and c=64 runs).")
    if checks:
        out.append("")
        out.append("Checked before the rounds (one request each to a verifying upstream): " +
                   "; ".join(f"{s}: {v}" for s, v in checks.items()) + ".")
    sign_raw = [x["es256_sign_us"] for x in signs if x]
    sign_proof = [x["dpop_proof_us"] for x in signs if x]
    sign_assert = [x.get("assertion_us") for x in signs if x]
    sign_josekit = [x.get("es256_josekit_us") for x in signs if x and x.get("es256_josekit_us")]
    out.append("")
    if sign_raw:
        out.append(f"Sign cost (benches/sign_cost.rs, thread CPU time on the proxy's CPU, each round): one ES256 "
                   f"signature {spread(sign_raw, '{:.1f}')} µs; a whole DPoP proof (JSON, base64, signature) "
                   f"{spread(sign_proof, '{:.1f}')} µs; a whole client assertion {spread(sign_assert, '{:.1f}')} µs; "
                   f"the same ES256 signature through josekit's own signer {spread(sign_josekit, '{:.1f}')} µs. "
                   f"For comparison, the same ES256 signature by ring (linked by rustls, not used for JWS): "
                   f"{spread([x.get('es256_ring_us') for x in signs if x], '{:.1f}')} µs.")

    # Ratios, computed within each round (the scenarios of one round ran minutes apart at most).
    def per_round(fn):
        vals = []
        for i in range(rounds):
            try:
                v = fn(i)
            except (IndexError, KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None:
                vals.append(v)
        return vals

    def get(s, i, k):
        return results[s][i][k]

    def sig(i):
        return signs[i]["es256_sign_us"]

    lines = []

    def target(name, vals, fmt, goal, ok, miss):
        if not vals:
            return
        m = statistics.median(vals)
        verdict = "met" if ok(m) else f"missed: {miss(m)}"
        lines.append(f"| {name} | {spread(vals, fmt)} | {goal} | {verdict} |")

    if "relay" in results and "nginx" in results:
        target("relay-only req/s ÷ nginx req/s (c=32)",
               per_round(lambda i: get("relay", i, "rps32") / get("nginx", i, "rps32")), "{:.2f}", "≥ 1.00",
               lambda m: m >= 1, lambda m: f"{(1 - m) * 100:.0f} % slower")
        if "direct" in results:
            target("relay-only added p50 µs (over direct) ÷ nginx added p50",
                   per_round(lambda i: (get("relay", i, "p50") - get("direct", i, "p50"))
                             / (get("nginx", i, "p50") - get("direct", i, "p50"))), "{:.2f}", "≤ 1.00",
                   lambda m: m <= 1, lambda m: f"{(m - 1) * 100:.0f} % more added latency")
            lines.append("| relay-only added p50 µs / nginx added p50 µs | " + spread(
                per_round(lambda i: get("relay", i, "p50") - get("direct", i, "p50")), "{:.0f}") + " / " + spread(
                per_round(lambda i: get("nginx", i, "p50") - get("direct", i, "p50")), "{:.0f}") + " | | |")
    if "full" in results and "nginx-mtls" in results and sign_raw:
        target("full path non-crypto CPU µs/req (total − 2 × sign) ÷ nginx→mTLS CPU µs/req",
               per_round(lambda i: (get("full", i, "cpu_us") - 2 * sig(i)) / get("nginx-mtls", i, "cpu_us")),
               "{:.2f}", "≤ 1.00", lambda m: m <= 1, lambda m: f"{(m - 1) * 100:.0f} % more CPU than nginx")
        target("… the same at c=1 (one request at a time)",
               per_round(lambda i: (get("full", i, "cpu1_us") - 2 * sig(i)) / get("nginx-mtls", i, "cpu1_us")),
               "{:.2f}", "≤ 1.00", lambda m: m <= 1, lambda m: f"{(m - 1) * 100:.0f} % more CPU than nginx")
        lines.append("| full path non-crypto CPU µs/req / nginx→mTLS CPU µs/req | " + spread(
            per_round(lambda i: get("full", i, "cpu_us") - 2 * sig(i)), "{:.1f}") + " / " + spread(
            per_round(lambda i: get("nginx-mtls", i, "cpu_us")), "{:.1f}") + " | | |")
    if "relay" in results and "nginx" in results:
        lines.append("| relay-only CPU µs/req / nginx CPU µs/req | " + spread(
            per_round(lambda i: get("relay", i, "cpu_us")), "{:.1f}") + " / " + spread(
            per_round(lambda i: get("nginx", i, "cpu_us")), "{:.1f}") + " | | |")
    for other, goal in (("mitmproxy", 25), ("node", 4)):
        if "full" in results and other in results:
            target(f"full path req/s ÷ {other} req/s (c=32)",
                   per_round(lambda i: get("full", i, "rps32") / get(other, i, "rps32")), "{:.1f}", f"≥ {goal}",
                   lambda m, goal=goal: m >= goal, lambda m, goal=goal: f"×{m:.1f} of ×{goal}")
    if "forward" in results and "mitmproxy-fwd" in results:
        target("forward req/s ÷ mitmproxy-fwd req/s (c=32)",
               per_round(lambda i: get("forward", i, "rps32") / get("mitmproxy-fwd", i, "rps32")), "{:.1f}", "≥ 25",
               lambda m: m >= 25, lambda m: f"×{m:.1f} of ×25")
    # What the app side's TLS (listen_tls) and CONNECT + TLS (forward mode) add to the full path:
    # no target, the figures themselves in the last column.
    for mode, keys in (("https", ("rps32", "cpu_us", "cpu1_us")), ("forward", ("rps32", "cpu_us", "cpu1_us"))):
        if mode not in results or "full" not in results:
            continue
        for key in keys:
            what, fmt = {"rps32": ("req/s (c=32)", "{:.0f}"), "cpu_us": ("CPU µs/req (c=32)", "{:.1f}"),
                         "cpu1_us": ("CPU µs/req (c=1)", "{:.1f}")}[key]
            vals = per_round(lambda i, key=key, mode=mode: get(mode, i, key) / get("full", i, key))
            if vals:
                lines.append(f"| {mode} {what} ÷ full {what} | {spread(vals, '{:.2f}')} | informational | "
                             f"{spread([r.get(key) for r in results[mode]], fmt)} vs "
                             f"{spread([r.get(key) for r in results['full']], fmt)} |")
    if sign_proof and sign_josekit:
        target("JOSE layer: a whole DPoP proof ÷ the bare josekit ES256 sign call",
               per_round(lambda i: signs[i]["dpop_proof_us"] / signs[i]["es256_josekit_us"]), "{:.2f}", "≤ 1.2",
               lambda m: m <= 1.2, lambda m: f"{(m - 1.2) * 100:.0f} points over")
    for s in ("relay", "pkjwt", "full"):
        if s in results:
            target(f"tokenrelay {s}: idle RSS MiB", [r.get("idle_kib", 0) / 1024 for r in results[s]], "{:.1f}",
                   "≤ 12", lambda m: m <= 12, lambda m: f"{m - 12:.1f} MiB over")
            target(f"tokenrelay {s}: peak RSS MiB at c=64", [r.get("peak_kib", 0) / 1024 for r in results[s]],
                   "{:.1f}", "≤ 40", lambda m: m <= 40, lambda m: f"{m - 40:.1f} MiB over")
    ab = []
    for s in ("relay", "pkjwt", "full"):
        if s in results and s + BASE in results:
            for key, what in (("cpu_us", "CPU µs/req c=32"), ("cpu1_us", "CPU µs/req c=1"), ("rps32", "req/s c=32"),
                              ("p50", "p50 µs c=1")):
                change = per_round(lambda i: (get(s, i, key) / get(s + BASE, i, key) - 1) * 100)
                ab.append(f"| {s} {what} | {spread([r.get(key) for r in results[s + BASE]], '{:.1f}')} | "
                          f"{spread([r.get(key) for r in results[s]], '{:.1f}')} | {spread(change, '{:+.1f}')} % |")
    if ab:
        out.append("")
        out.append("| before → after (same rounds) | baseline binary | this binary | change per round |")
        out.append("|---|---:|---:|---:|")
        out.extend(ab)
    if lines:
        out.append("")
        out.append("| ratio (per round) | median (min–max) | target | verdict |")
        out.append("|---|---:|---|---|")
        out.extend(lines)
    return "\n".join(out)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenrelay", default=str(ROOT / "target" / "release" / "tokenrelay"))
    ap.add_argument("--sign-cost", default=None, help="benches/sign_cost.rs executable")
    ap.add_argument("--connect-load", default=None,
                    help="benches/connect_load.rs executable: the CONNECT load generator of the forward scenarios")
    ap.add_argument("--baseline", default=None,
                    help="another tokenrelay binary: its relay/pkjwt/full run beside the others, for before/after")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 5)))
    ap.add_argument("--secs", type=float, default=float(os.environ.get("BENCH_SECS", 3)))
    ap.add_argument("--lat-secs", type=float, default=float(os.environ.get("BENCH_LAT_SECS", 2)))
    ap.add_argument("--peak-secs", type=float, default=float(os.environ.get("BENCH_PEAK_SECS", 2)))
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--sign-ms", type=float, default=800)
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""), help="comma-separated scenarios")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-run" / "results.md"))
    ap.add_argument("--profile", action="store_true",
                    help="instead of the rounds: perf record the full path under c=32 load")
    ap.add_argument("--profile-scenario", default="full")
    ap.add_argument("--instructions", action="store_true",
                    help="instead of the rounds: instructions per request of the tokenrelay scenarios (valgrind)")
    ap.add_argument("--instr-requests", type=int, default=500)
    ap.add_argument("--profile-secs", type=float, default=8)
    args = ap.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only.split(",")]
    if args.only:
        unknown = {s for s in args.only.split(",") if s} - set(SCENARIOS)
        if unknown:
            ap.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    uses = [args.profile_scenario] if args.profile else [] if args.instructions else scenarios
    if any(kind(s) in CONNECT for s in uses) and not args.connect_load:
        ap.error("the forward scenarios (" + ", ".join(sorted(CONNECT)) + ") need --connect-load "
                 "(bench/run.sh builds benches/connect_load.rs and passes it)")
    if args.baseline:
        scenarios = [v for s in scenarios for v in ([s, s + BASE] if s in TOKENRELAY else [s])]
    started = time.time()
    loads = [loadavg()]
    b = Bench(args)
    up = b.start_upstream(b.up_plain, b.up_tls)
    try:
        if args.profile:
            profile(b, args)
            return
        if args.instructions:
            text = instructions(b, args, scenarios)
            (b.dir / "instructions.md").write_text(text + "\n")
            print(text)
            return
        checks = {}
        if args.check:
            log("checking what each scenario sends upstream:")
            checks = b.verify_all(scenarios)
        results: dict[str, list] = {s: [] for s in scenarios}
        signs = []
        for rnd in range(args.rounds):
            order = scenarios[rnd % len(scenarios):] + scenarios[:rnd % len(scenarios)]
            signs.append(b.sign_cost())
            for s in order:
                r = b.measure(s)
                results[s].append(r)
                log(f"round {rnd + 1}/{args.rounds} {s:<13} " + " ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
            loads.append(loadavg())
        # Rows in the rotated order are re-aligned by round index: results[s][i] is round i.
        text = report(results, signs, args, loads, checks, started)
        Path(args.out).write_text(text + "\n")
        (Path(args.out).with_suffix(".json")).write_text(json.dumps(
            {"results": results, "sign": signs, "loadavg": loads}, indent=1))
        print(text)
        log(f"\nwritten to {args.out}")
    finally:
        up.stop()


# Where the ES256 signatures are, by function (inclusive cost), first match wins: tokenrelay's
# signer; josekit's (builds before tokenrelay signed with OpenSSL directly); OpenSSL's ECDSA
# alone (when an LTO build inlined the first).
SIGN_FNS = ("???:tokenrelay::jose::Signer::sign [",
            "EcdsaJwsSigner as josekit::jws::jws_algorithm::JwsSigner>::sign [",
            "???:ECDSA_do_sign [")


def instructions(b: Bench, args, scenarios: list[str]) -> str:
    """Instructions per request (valgrind's callgrind) of the tokenrelay scenarios: unlike the
    timings, the same on a quiet and on a busy machine, so before/after differences of a few
    percent show. Sequential requests (c=1) after a warm-up; the ES256 signatures' share is
    the inclusive count of josekit's ECDSA signer (hashing, OpenSSL context set-up, signing)."""
    import http.client

    rows = []
    for s in [s for s in scenarios if kind(s) in TOKENRELAY]:
        out = b.dir / f"callgrind-{s.replace('@', '-')}.out"
        port = free_port()
        proc, _ = b.start(s, port, b.up_plain, b.up_tls,
                          wrap=["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

            def send():
                conn.request("POST", PATH, body=BODY, headers={"Content-Type": "application/x-www-form-urlencoded"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{s}: status {resp.status}")

            for _ in range(50):
                send()
            run(["callgrind_control", "-i", "on", str(proc.pid)])
            for _ in range(args.instr_requests):
                send()
            run(["callgrind_control", "-i", "off", str(proc.pid)])
            run(["callgrind_control", "-d", str(proc.pid)])
        finally:
            proc.stop()
        total = 0
        signs = {fn: 0 for fn in SIGN_FNS}
        for f in b.dir.glob(out.name + "*"):
            text = run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(f)])
            for line in text.splitlines():
                cost = line.strip().split(" ", 1)[0].replace(",", "")
                if not cost.isdigit():
                    continue
                if line.rstrip().endswith("PROGRAM TOTALS"):
                    total += int(cost)
                else:
                    for fn in SIGN_FNS:
                        if fn in line:
                            signs[fn] += int(cost)
        sign = next((v for v in signs.values() if v), 0)
        n = args.instr_requests
        rows.append((s, total / n / 1000, sign / n / 1000))
        log(f"instructions {s:<13} {total / n / 1000:.1f} k/request, ES256 signing {sign / n / 1000:.1f} k")
    lines = [f"Instructions per request (callgrind, {args.instr_requests} sequential requests after a warm-up; "
             "user space of the tokenrelay process):", "",
             "| scenario | k instructions/request | … in ES256 signing | … the rest (non-crypto) |",
             "|---|---:|---:|---:|"]
    for s, total, sign in rows:
        lines.append(f"| {s} | {total:.1f} | {sign:.1f} | {total - sign:.1f} |")
    base = {kind(s): (t, g) for s, t, g in rows if s.endswith(BASE)}
    after = {s: (t, g) for s, t, g in rows if not s.endswith(BASE)}
    if base:
        lines += ["", "| before → after | total | non-crypto |", "|---|---:|---:|"]
        for s, (t, g) in after.items():
            if s in base:
                bt, bg = base[s]
                lines.append(f"| {s} | {bt:.1f} → {t:.1f} k ({(t / bt - 1) * 100:+.1f} %) | "
                             f"{bt - bg:.1f} → {t - g:.1f} k ({((t - g) / (bt - bg) - 1) * 100:+.1f} %) |")
    return "\n".join(lines)


def profile(b: Bench, args) -> None:
    """perf record (DWARF call graphs) of one scenario's proxy under c=32 load."""
    port = free_port()
    proc, info = b.start(args.profile_scenario, port, b.up_plain, b.up_tls)
    load = b.driver(args.profile_scenario, port, info)
    data = b.dir / "perf.data"
    try:
        load(32, 1)
        perf = subprocess.Popen(["perf", "record", "-F", "1999", "--call-graph", "dwarf,32768", "-p", str(proc.pid),
                                 "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t = load(32, args.profile_secs)
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
        log(f"profiled {t['requests']} requests ({t['rps']:.0f} req/s) into {data}")
    finally:
        proc.stop()
    flat, graph = b.dir / "perf-flat.txt", b.dir / "perf-children.txt"
    for path, opts in ((flat, ["--no-children", "--sort", "dso,symbol", "--percent-limit", "0.3"]),
                       (graph, ["--children", "--sort", "symbol", "--percent-limit", "1"])):
        text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none"] + opts,
                              capture_output=True, text=True).stdout
        # perf pads every line to its widest symbol: keep the text, drop the padding.
        path.write_text("".join(line.rstrip().removesuffix("-      -").rstrip() + "\n"
                                for line in text.splitlines() if line.strip() and not line.startswith("#")))
    print(f"flat profile: {flat}\ninclusive (children) profile: {graph}")


if __name__ == "__main__":
    main()
