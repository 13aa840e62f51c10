//! Real servers written in Python for the alert tests — an SMTP server (aiosmtpd) and a
//! webhook receiver that verifies signatures with the official `standardwebhooks`
//! package — run as child processes that stop when their handle is dropped (and, since
//! each one reads its standard input until it closes, when the test process ends in any
//! way).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Fails the test loudly when Python ([`crate::python`]) or one of its `modules` is
/// missing.
pub fn require_python(modules: &[(&str, &str)]) {
    let python = crate::python();
    for (module, package) in modules {
        let ok = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "these tests need Python ({}; SG_PYTHON or an active virtual environment \
             chooses another) with the `{module}` module: {} -m pip install {package}",
            python.display(),
            python.display()
        );
    }
}

/// A Python server: started from `script` with the port and an output directory as
/// arguments; it prints `ready` once it listens and stops when its stdin closes.
pub struct PyServer {
    pub port: u16,
    pub out_dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl PyServer {
    /// Starts the server on `port`; panics with its log when it does not start.
    pub fn start(
        dir: &Path,
        name: &str,
        script: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> PyServer {
        Self::try_start(dir, name, script, port, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server on a free loopback port; on a new one when another process took
    /// the port between [`crate::free_port`] releasing it and the server binding it.
    pub fn start_on_free_port(
        dir: &Path,
        name: &str,
        script: &str,
        env: &[(&str, &str)],
    ) -> PyServer {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(dir, name, script, crate::free_port(), env) {
                Ok(server) => return server,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port in 5 attempts; the last: {last}");
    }

    fn try_start(
        dir: &Path,
        name: &str,
        script: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Result<PyServer, String> {
        let script_path = dir.join(format!("{name}.py"));
        std::fs::write(&script_path, script).unwrap();
        let out_dir = dir.join(format!("{name}-out"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let log = dir.join(format!("{name}-{port}.log"));
        let mut command = Command::new(crate::python());
        command
            .arg(&script_path)
            .arg(port.to_string())
            .arg(&out_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .expect("cannot run Python (sg_testkit::python())");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = PyServer {
            port,
            out_dir,
            child,
            stdin,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.trim() == "ready" => Ok(server),
            other => {
                server.stop();
                Err(format!(
                    "{name} did not start ({other:?}); its log:\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                ))
            }
        }
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output directory holds at least `n` `.json` records and returns
    /// them, oldest first.
    pub fn wait_for_records(&self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let records = self.records();
            if records.len() >= n {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} records, have {}; server log:\n{}",
                records.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The records written so far, oldest first.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.out_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An SMTP server (aiosmtpd) that accepts every message and writes each, parsed by
/// Python's `email` package, as a JSON record: envelope, From, To, Subject, text body
/// and the raw message. Recipients starting `reject` get a 550, `later` a 451.
pub const SMTP_SERVER: &str = r#"
import json, os, sys, time
from email import message_from_bytes, policy
from aiosmtpd.controller import Controller

port = int(sys.argv[1])
out_dir = sys.argv[2]

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = message_from_bytes(raw, policy=policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "content_type": msg.get_content_type(),
            "body": msg.get_content(),
            "raw": raw.decode("utf-8", "replace"),
        }
        name = "%020d.json" % time.time_ns()
        tmp = os.path.join(out_dir, "." + name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, name))
        return "250 Message accepted for delivery"

controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// An HTTP receiver that verifies each POST with the official Python `standardwebhooks`
/// package (secret from `WEBHOOK_SECRET`) and writes a JSON record of it: path,
/// headers, body, whether it verified (and the error if not). It answers 204 when the
/// signature verifies and 401 when not; a path `/status/NNN` answers NNN instead (with
/// a `Location` for 3xx), and `/slow` waits 5 s first.
pub const WEBHOOK_RECEIVER: &str = r#"
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook

port = int(sys.argv[1])
out_dir = sys.argv[2]
webhook = Webhook(os.environ["WEBHOOK_SECRET"])

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = dict(self.headers.items())
        record = {"path": self.path, "headers": headers, "body": body.decode("utf-8", "replace")}
        try:
            record["payload"] = webhook.verify(body, headers)
            record["verified"] = True
        except Exception as e:
            record["verified"] = False
            record["error"] = repr(e)
        name = "%020d.json" % time.time_ns()
        tmp = os.path.join(out_dir, "." + name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, name))
        status = 204 if record["verified"] else 401
        if self.path.startswith("/status/"):
            status = int(self.path.split("/")[2])
        if self.path == "/slow":
            time.sleep(5)
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        if status == 429:
            self.send_header("Retry-After", "120")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
server.shutdown()
"#;

/// An OpenTelemetry collector stand-in: serves OTLP/HTTP `POST /v1/traces` (protobuf,
/// decoded with the official `opentelemetry-proto` package) and writes one JSON record
/// per span: `service` (the resource's `service.name`), `name`, `trace_id`, `span_id`,
/// `parent_span_id` (hex; empty for a root), `kind`, `attributes` (key → value as
/// text) and `events` (name and attributes each). Anything else answers 404; a body
/// that does not decode, 400.
pub const OTLP_RECEIVER: &str = r#"
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

port = int(sys.argv[1])
out_dir = sys.argv[2]
lock = threading.Lock()
counter = [0]

def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind))
    return str(getattr(v, kind))

def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    record = {
                        "service": resource.get("service.name", ""),
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": int(span.kind),
                        "attributes": attributes(span.attributes),
                        "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in span.events],
                    }
                    with lock:
                        counter[0] += 1
                        name = "%020d-%08d.json" % (time.time_ns(), counter[0])
                    tmp = os.path.join(out_dir, "." + name + ".tmp")
                    with open(tmp, "w") as f:
                        json.dump(record, f)
                    os.rename(tmp, os.path.join(out_dir, name))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
server.shutdown()
"#;
