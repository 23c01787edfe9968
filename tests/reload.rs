//! Hot reload: nothing dropped under load, state carried over, file watch by rename, refusals.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop::metrics::Metrics;
use backstop::App;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{eventually, get, metrics, sample, send, Backend, Behaviour};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("backstop-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn start(file: &std::path::Path, yaml: &str) -> App {
    std::fs::write(file, yaml).unwrap();
    let config = backstop::config::load(file).unwrap();
    App::start_watching(config, Metrics::new(), file)
        .await
        .unwrap()
}

fn header() -> &'static str {
    "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\n"
}

async fn reload(app: &App) -> support::Answer {
    send(
        Request::post(format!("http://{}/admin/reload", app.admin_addr()))
            .header("x-backstop-admin", "1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
}

/// Under a steady stream of concurrent requests, 20 reloads alternating two configs and a few
/// invalid ones lose nothing: every response is a 200 and each request reached a backend once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let d = dir("load");
    let file = d.join("backstop.yaml");
    let config = |backend: &Backend, timeout: &str| {
        format!(
            "{}upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: all, upstream: svc, timeout: {timeout} }}\n",
            header(),
            backend.addr
        )
    };
    let app = start(&file, &config(&a, "5s")).await;
    let url = format!("http://{}/orders", app.proxy_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, sent, ok) = (url.clone(), stop.clone(), sent.clone(), ok.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 5000 {
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if get(url.clone()).await.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut generation = 1;
    for i in 0..20 {
        eventually(Duration::from_secs(5), || async {
            sent.load(Ordering::Relaxed) > i * 20
        })
        .await;
        let (backend, timeout) = if i % 2 == 0 { (&b, "4s") } else { (&a, "5s") };
        std::fs::write(&file, config(backend, timeout)).unwrap();
        let r = reload(&app).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        generation = r.json()["generation"].as_u64().unwrap().max(generation);
        if i % 7 == 3 {
            std::fs::write(&file, "routes: [ { name: broken").unwrap();
            let r = reload(&app).await;
            assert_eq!(r.status, 422);
            assert!(!r.json()["errors"].as_array().unwrap().is_empty());
            std::fs::write(&file, config(backend, timeout)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, ok) = (sent.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    assert_eq!(ok, sent, "every response was a 200");
    assert_eq!(
        a.hits() + b.hits(),
        sent,
        "each request reached a backend exactly once"
    );
    assert!(a.hits() > 0 && b.hits() > 0, "both configs served traffic");
    assert!(
        generation >= 21,
        "20 accepted reloads: generation {generation}"
    );
    let m = metrics(&app).await;
    assert!(sample(&m, r#"backstop_config_reloads_total{result="rejected"}"#).unwrap() >= 3.0);
    assert_eq!(
        sample(&m, "backstop_config_generation"),
        Some(generation as f64)
    );
}

/// An open breaker survives a reload that changes another upstream and route.
#[tokio::test]
async fn open_breaker_survives_an_unrelated_reload() {
    let (failing, other) = (
        Backend::start(Behaviour::Status(503)).await,
        Backend::start(Behaviour::Echo).await,
    );
    let d = dir("breaker");
    let file = d.join("backstop.yaml");
    let config = |other_timeout: &str| {
        format!(
            "{}upstreams:\n  pg:\n    endpoints: [{{ address: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 60s }}\n  other:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: pay, match: {{ path_prefix: /pay }}, upstream: pg }}\n  - {{ name: rest, upstream: other, timeout: {other_timeout} }}\n",
            header(),
            failing.addr,
            other.addr
        )
    };
    let app = start(&file, &config("5s")).await;
    let pay = format!("http://{}/pay", app.proxy_addr());
    get(pay.clone()).await;
    assert_eq!(
        get(pay.clone()).await.header("x-backstop-reason"),
        "circuit_open"
    );
    std::fs::write(&file, config("2s")).unwrap();
    assert_eq!(reload(&app).await.json()["generation"], 2);
    assert_eq!(
        get(pay.clone()).await.header("x-backstop-reason"),
        "circuit_open",
        "still open after the reload"
    );
    assert_eq!(failing.hits(), 1);
    let circuits = get(format!("http://{}/admin/circuits", app.admin_addr()))
        .await
        .json();
    assert_eq!(circuits["circuits"][0]["state"], "open");
    assert_eq!(
        get(format!("http://{}/rest", app.proxy_addr()))
            .await
            .status,
        200
    );
}

/// Replacing the file by rename (as a ConfigMap update does) is picked up by the watcher.
#[tokio::test]
async fn file_replaced_by_rename_is_reloaded() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let d = dir("rename");
    let file = d.join("backstop.yaml");
    let config = |backend: &Backend| {
        format!("{}upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n", header(), backend.addr)
    };
    let app = start(&file, &config(&a)).await;
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.json()["backend"],
        a.addr.to_string()
    );
    let staged = d.join("..2026_11_22_new");
    std::fs::write(&staged, config(&b)).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    eventually(Duration::from_secs(10), || async {
        get(format!("http://{}/", app.proxy_addr())).await.json()["backend"] == b.addr.to_string()
    })
    .await;
    let admin = get(format!("http://{}/admin/config", app.admin_addr()))
        .await
        .json();
    assert_eq!(admin["generation"], 2);
}

/// A changed listener address is refused with a clear message; the old config stays.
#[tokio::test]
async fn listener_changes_need_a_restart() {
    let backend = Backend::start(Behaviour::Echo).await;
    let d = dir("listen");
    let file = d.join("backstop.yaml");
    let body = format!("upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n", backend.addr);
    let app = start(&file, &format!("{}{body}", header())).await;
    std::fs::write(
        &file,
        format!("listen: 127.0.0.1:1\nadmin: {{ listen: 127.0.0.1:0 }}\n{body}"),
    )
    .unwrap();
    let r = reload(&app).await;
    assert_eq!(r.status, 422);
    let errors = r.json()["errors"].to_string();
    assert!(
        errors.contains("listen: changed from") && errors.contains("restart"),
        "{errors}"
    );
    assert_eq!(
        get(format!("http://{}/", app.proxy_addr())).await.status,
        200
    );
}

/// SIGHUP makes the real binary reload its file.
#[tokio::test]
async fn sighup_reloads_the_file() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let d = dir("sighup");
    let file = d.join("backstop.yaml");
    let config = |backend: &Backend| {
        format!("{}upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n", header(), backend.addr)
    };
    std::fs::write(&file, config(&a)).unwrap();
    let bin = support::Binary::start(&file).await;
    assert_eq!(
        get(format!("http://{}/", bin.proxy)).await.json()["backend"],
        a.addr.to_string()
    );
    std::fs::write(&file, config(&b)).unwrap();
    bin.signal("-HUP");
    eventually(Duration::from_secs(10), || async {
        bin.logged(|l| l["trigger"] == "SIGHUP" && l["message"] == "config reloaded")
    })
    .await;
    assert_eq!(
        get(format!("http://{}/", bin.proxy)).await.json()["backend"],
        b.addr.to_string()
    );
}

/// Opens of `file` seen by an inotify watch of its directory (reads of the file by anyone).
struct Opens {
    _watcher: notify::RecommendedWatcher,
    count: Arc<AtomicUsize>,
}

impl Opens {
    fn watch(file: &std::path::Path) -> Opens {
        use notify::{EventKind, RecursiveMode, Watcher};
        let count = Arc::new(AtomicUsize::new(0));
        let (seen, name) = (count.clone(), file.to_owned());
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e {
                if matches!(
                    e.kind,
                    EventKind::Access(notify::event::AccessKind::Open(_))
                ) && e.paths.contains(&name)
                {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
        watcher
            .watch(file.parent().unwrap(), RecursiveMode::NonRecursive)
            .unwrap();
        Opens {
            _watcher: watcher,
            count,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Watches `check` for `window` (polling every 10ms) and fails as soon as it turns false: a
/// bounded window for a "nothing more happens" property, which no positive event can end.
async fn stays(window: Duration, what: &str, check: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + window;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    while tokio::time::Instant::now() < end {
        poll.tick().await;
        assert!(check(), "{what}");
    }
}

/// An invalid file on disk is rejected and logged once, not every debounce period; and a file
/// that does not change is not read again (the watcher used to wake itself up by reading it).
#[tokio::test]
async fn an_invalid_file_is_reported_once_and_an_unchanged_file_is_not_polled() {
    let (a, b) = (
        Backend::start(Behaviour::Echo).await,
        Backend::start(Behaviour::Echo).await,
    );
    let d = dir("once");
    let file = d.join("backstop.yaml");
    let config = |backend: &Backend| {
        format!("{}upstreams:\n  svc:\n    endpoints: [{{ address: \"{}\" }}]\nroutes:\n  - {{ name: all, upstream: svc }}\n", header(), backend.addr)
    };
    std::fs::write(&file, config(&a)).unwrap();
    let bin = support::Binary::start(&file).await;
    let rejections = || {
        bin.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("config reload rejected"))
            })
            .count()
    };
    std::fs::write(&file, "routes: [ { name: broken").unwrap();
    eventually(Duration::from_secs(10), || async { rejections() >= 1 }).await;
    let opens = Opens::watch(&file);
    stays(
        Duration::from_millis(1500),
        "one rejection per content",
        || rejections() == 1,
    )
    .await;
    assert_eq!(
        opens.count(),
        0,
        "the unchanged invalid file was read again"
    );
    // A valid file again: reloaded once, then left alone.
    std::fs::write(&file, config(&b)).unwrap();
    eventually(Duration::from_secs(10), || async {
        get(format!("http://{}/", bin.proxy)).await.json()["backend"] == b.addr.to_string()
    })
    .await;
    let settled = opens.count();
    stays(
        Duration::from_millis(1500),
        "the valid file is not polled",
        || opens.count() == settled,
    )
    .await;
    let reloaded = bin
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["message"] == "config reloaded")
        .count();
    assert_eq!(reloaded, 1);
    assert_eq!(rejections(), 1);
}
