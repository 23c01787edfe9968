//! Test harness: real hyper backends on 127.0.0.1:0 whose behaviour a test switches, and the
//! real proxy started in-process on ephemeral ports.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::metrics::Metrics;
use backstop::App;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What a test backend does with the next requests.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with a JSON echo of method, path, query and headers.
    Echo,
    /// This status, empty body.
    Status(u16),
    /// Echo after a delay.
    Delay(Duration),
    /// Read the request, then never answer.
    Silent,
    /// Read the request, then drop the connection without a response.
    Reset,
    /// This status with this body, as `application/json`.
    Json(u16, String),
}

/// A backend on loopback that counts what it received.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    script: Arc<Mutex<std::collections::VecDeque<Behaviour>>>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Backend {
    pub async fn start(behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            script: Arc::default(),
            seen: Arc::default(),
        };
        let b = backend.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let b = b.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| b.clone().handle(req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        backend
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// The next requests get these behaviours, one each, before the standing one applies again.
    pub fn script(&self, behaviours: Vec<Behaviour>) {
        self.script.lock().unwrap().extend(behaviours);
    }

    /// Headers of every request received, in order.
    pub fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that reached this backend (counted when the request head arrived).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.headers().clone());
        let scripted = self.script.lock().unwrap().pop_front();
        let behaviour = scripted.unwrap_or_else(|| self.behaviour.lock().unwrap().clone());
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match behaviour {
            Behaviour::Echo => Ok(echo(&parts, body.len(), &self.addr)),
            Behaviour::Delay(d) => {
                // Simulated latency of a slow backend, not a wait in a test.
                tokio::time::sleep_until(tokio::time::Instant::now() + d).await;
                Ok(echo(&parts, body.len(), &self.addr))
            }
            Behaviour::Status(code) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                Ok(r)
            }
            Behaviour::Silent => std::future::pending().await,
            Behaviour::Reset => Err(std::io::Error::other("reset on purpose")),
            Behaviour::Json(code, body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(r)
            }
        }
    }
}

fn echo(parts: &http::request::Parts, body_len: usize, addr: &SocketAddr) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let body = serde_json::json!({
        "backend": addr.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body_len,
    });
    Response::new(Full::new(Bytes::from(body.to_string())))
}

/// Starts the proxy with `yaml` (listeners are forced to 127.0.0.1:0).
pub async fn proxy(yaml: &str) -> App {
    let yaml = format!("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{yaml}");
    let config =
        backstop::config::load_str(&yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    App::start(config, Metrics::new()).await.unwrap()
}

/// A one-upstream, one-route config in front of `backends`.
pub fn simple_config(backends: &[&Backend], route_extra: &str) -> String {
    let endpoints: String = backends
        .iter()
        .map(|b| format!("      - address: {}\n", b.addr))
        .collect();
    format!(
        "upstreams:\n  svc:\n    endpoints:\n{endpoints}routes:\n  - name: all\n    upstream: svc\n{route_extra}"
    )
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response with its body read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let resp = client().request(req).await.expect("the proxy answered");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// POSTs `{}` to `url`, with an `idempotency-key` header when `key` is given.
pub async fn post_keyed(url: &str, key: Option<&str>) -> Answer {
    let mut req = Request::post(url);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    send(req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()).await
}

pub async fn get(url: String) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn metrics(app: &App) -> String {
    String::from_utf8_lossy(
        &get(format!("http://{}/metrics", app.admin_addr()))
            .await
            .body,
    )
    .into_owned()
}

/// The value of the sample whose line starts with `series` (name and labels as rendered).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        poll.tick().await;
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
    }
}

/// A loopback port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

pub fn infallible<T>(v: T) -> Result<T, Infallible> {
    Ok(v)
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16) {
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
    })
    .await;
}

/// redis-server flags for a throwaway server on loopback: no persistence.
fn redis_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// A real redis-server on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts redis-server (installed by ./scripts/test) and waits until it accepts connections.
    pub async fn start() -> RedisServer {
        let port = closed_port().await.port();
        let mut server = RedisServer { port, child: None };
        server.restart().await;
        server
    }

    /// Starts it again on the same port (after `stop`).
    pub async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(redis_args(self.port))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (./scripts/test installs it with apt-get)");
        self.child = Some(child);
        wait_for_port(self.port).await;
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real three-node Redis Cluster on free loopback ports (no replicas), killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<std::process::Child>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "backstop-cluster-{}-{}",
            std::process::id(),
            closed_port().await.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = closed_port().await.port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = std::process::Command::new("redis-server")
                .args(redis_args(port))
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .current_dir(&node_dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            children.push(child);
            ports.push(port);
        }
        for port in &ports {
            wait_for_port(*port).await;
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli is installed with redis-server");
        assert!(created.success(), "redis-cli --cluster create failed");
        let first = ports[0].to_string();
        eventually(Duration::from_secs(15), || {
            let first = first.clone();
            async move {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &first, "cluster", "info"])
                    .output();
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            }
        })
        .await;
        RedisCluster {
            ports,
            children,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Like `get`, but `None` when nothing answers (for polling a server that is starting).
pub async fn try_get(url: String) -> Option<Answer> {
    let resp = client()
        .request(Request::get(url).body(Full::default()).ok()?)
        .await
        .ok()?;
    let (parts, body) = resp.into_parts();
    Some(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.ok()?.to_bytes(),
    })
}

/// The real `backstop run` binary, its addresses (read from its startup log) and its log lines.
pub struct Binary {
    pub child: tokio::process::Child,
    pub proxy: String,
    pub admin: String,
    pub logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Binary {
    /// Starts `backstop run -c config` (JSON logs) and waits until it serves.
    pub async fn start(config: &std::path::Path) -> Binary {
        Self::start_with(config, &[]).await
    }

    /// [`Binary::start`] with more `run` arguments.
    pub async fn start_with(config: &std::path::Path, args: &[&str]) -> Binary {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["run", "-c"])
            .arg(config)
            .args(["--log-format", "json"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (proxy, admin) = loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("backstop logged its addresses")
                .unwrap()
                .expect("backstop is still running");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["message"] == "backstop is serving" {
                break (
                    v["proxy"].as_str().unwrap().to_owned(),
                    v["admin"].as_str().unwrap().to_owned(),
                );
            }
        };
        let logs: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Binary {
            child,
            proxy,
            admin,
            logs,
        }
    }

    /// Sends a signal (e.g. "-HUP", "-TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Whether a log line satisfies `check`.
    pub fn logged(&self, check: impl Fn(&serde_json::Value) -> bool) -> bool {
        self.logs.lock().unwrap().iter().any(check)
    }
}

/// Reads one HTTP/1.1 message (head and a content-length body) from a raw `stream`; bytes past
/// it stay in `buf` for the next call. Its head in lower case, or `None` at EOF or an error.
pub async fn read_message(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Some(head);
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs every fixture of `dir` against its golden file; the mismatches, empty when all match.
pub fn check_golden_dir(dir: &std::path::Path) -> (usize, Vec<String>) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let (mut ran, mut failures) = (0, Vec::new());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(args) = text.lines().next().and_then(|l| l.strip_prefix("# args: ")) else {
            continue;
        };
        ran += 1;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(args.split_whitespace())
            .current_dir(dir)
            .env_remove("BACKSTOP_CONFIG")
            .env_remove("BACKSTOP_ADMIN_TOKEN")
            .output()
            .unwrap();
        let got = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            out.status.code().map_or("signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let golden = file.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "{}:\n--- got\n{got}--- expected\n{expected}",
                file.display()
            ));
        }
    }
    (ran, failures)
}
