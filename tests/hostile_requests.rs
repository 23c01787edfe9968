//! Requests crafted to get past the routes or to lie about who sent them: dot segments (plain,
//! percent-encoded, with `;` or a backslash), encoded slashes, spoofed forwarding headers and
//! unusable request ids. Requests go out as raw bytes over TCP so that nothing on the client
//! side normalises them first; the backend records what actually reached it.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WITHIN: Duration = Duration::from_secs(10);

/// What came back for a raw request.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `target` as the request target of a GET with `extra` header lines (each ending in
/// `\r\n`, raw bytes), and reads the whole answer (the connection is closed after it).
async fn raw_get(app: &backstop::App, target: &[u8], extra: &[u8]) -> Raw {
    let mut request = Vec::new();
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n");
    request.extend_from_slice(extra);
    request.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(app.proxy_addr()).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answered and closed in time")
        .expect("read the answer");
    parse(&answer)
}

fn parse(answer: &[u8]) -> Raw {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut body = answer[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Raw { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// `/public` and `/files` (which allows encoded slashes) routes; nothing else is routed.
fn routes(backend: &Backend, server: &str) -> String {
    format!(
        "{server}upstreams:\n  svc:\n    endpoints:\n      - address: {}\n\
         routes:\n  - name: public\n    match: {{ path_prefix: /public }}\n    upstream: svc\n\
         \x20 - name: files\n    match: {{ path_prefix: /files, allow_encoded_slashes: true }}\n    upstream: svc\n",
        backend.addr
    )
}

#[tokio::test]
async fn traversal_out_of_a_route_never_reaches_the_backend() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    let cases: [&[u8]; 16] = [
        b"/public/../internal/x",
        b"/public/%2e%2e/internal/users",
        b"/public/%2E%2E/internal/users",
        b"/public/.%2e/internal/users",
        b"/public/%2e./internal/users",
        b"/public/./../internal/users",
        b"/public/..%2finternal/users",
        b"/public/..%2Finternal/users",
        b"/public/..;/internal/users",
        b"/public/..;jsessionid=1/internal/users",
        b"/public/.%2e;/internal/users",
        b"/public/..\\internal/users",
        b"/public/..%5cinternal/users",
        b"/public/../../internal/users",
        b"/../public/x",
        b"/files/..%2f..%2finternal/users",
    ];
    for target in cases {
        let answer = raw_get(&app, target, b"").await;
        let shown = String::from_utf8_lossy(target);
        assert!(
            answer.status == 400 || answer.status == 404,
            "{shown}: {}",
            answer.head
        );
        if answer.status == 404 {
            assert_eq!(
                answer.header("x-backstop-reason"),
                Some("no_route"),
                "{shown}"
            );
        }
        assert_eq!(backend.hits(), 0, "{shown} reached the backend");
    }
    // The route still works, so the refusals above are about the paths.
    assert_eq!(raw_get(&app, b"/public/x", b"").await.status, 200);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn dot_segments_escaping_the_route_or_the_root_answer_bad_path_or_no_route() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    for (target, status, reason) in [
        (&b"/public/../internal/x"[..], 404, "no_route"),
        (b"/public/%2e%2e/internal", 404, "no_route"),
        (b"http://a.test/public/../internal", 404, "no_route"),
        (b"/public/..;/internal", 400, "bad_path"),
        (b"/public/..%2finternal", 400, "bad_path"),
        (b"/public/..%5Cinternal", 400, "bad_path"),
        (b"/public/../../x", 400, "bad_path"),
        (b"/..", 400, "bad_path"),
    ] {
        let answer = raw_get(&app, target, b"").await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(answer.status, status, "{shown}: {}", answer.head);
        assert_eq!(answer.header("x-backstop-reason"), Some(reason), "{shown}");
        assert_eq!(answer.json()["error"], reason, "{shown}");
    }
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn the_normalised_path_is_what_the_backend_receives() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    for (target, path, query) in [
        (
            &b"/public/a/./b/../c?x=../y&z=%2e%2e"[..],
            "/public/a/c",
            Some("x=../y&z=%2e%2e"),
        ),
        (b"/public/a/%2e/b/%2E%2e/c", "/public/a/c", None),
        (b"/public/a/b/..", "/public/a/", None),
        (b"/public/a/.", "/public/a/", None),
        (b"/internal/../public/x", "/public/x", None),
        (b"/public/file.v2.json", "/public/file.v2.json", None),
        (b"http://a.test/public/a/../b?q", "/public/b", Some("q")),
        (b"/public/a%20b/%7Euser", "/public/a%20b/%7Euser", None),
    ] {
        let before = backend.hits();
        let answer = raw_get(&app, target, b"").await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(answer.status, 200, "{shown}: {}", answer.head);
        assert_eq!(backend.hits(), before + 1, "{shown}");
        let echo = answer.json();
        assert_eq!(echo["path"], path, "{shown}");
        assert_eq!(echo["query"].as_str(), query, "{shown}");
    }
}

#[tokio::test]
async fn encoded_slashes_and_backslashes_need_the_route_to_allow_them() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    for target in [
        &b"/public/a%2Fb"[..],
        b"/public/a%2fb",
        b"/public/a%5Cb",
        b"/public/a%5cb",
    ] {
        let answer = raw_get(&app, target, b"").await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(answer.status, 400, "{shown}: {}", answer.head);
        assert_eq!(
            answer.header("x-backstop-reason"),
            Some("bad_path"),
            "{shown}"
        );
    }
    // A raw backslash too (hyper's parser lets it through).
    let answer = raw_get(&app, b"/public/a\\b", b"").await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert_eq!(answer.header("x-backstop-reason"), Some("bad_path"));
    assert_eq!(backend.hits(), 0);

    let answer = raw_get(&app, b"/files/a%2Fb/c%5Cd", b"").await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.json()["path"], "/files/a%2Fb/c%5Cd");
    let answer = raw_get(&app, b"/files/a\\b", b"").await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.json()["path"], "/files/a\\b");
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    let spoofed = b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\
        X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n";
    let answer = raw_get(&app, b"/public/x", spoofed).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let seen = backend.last_headers();
    let all = |name: &str| -> Vec<String> {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert_eq!(all("x-forwarded-host"), ["a.test"]);

    // Without any forwarding header the same values are set.
    raw_get(&app, b"/public/x", b"").await;
    let seen = backend.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "a.test");
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_appended_to() {
    let backend = Backend::start(Behaviour::Echo).await;
    let server = "server:\n  trusted_proxies: [10.0.0.0/8, 127.0.0.1/32]\n";
    let app = proxy(&routes(&backend, server)).await;
    let forwarded = b"X-Forwarded-For: 6.6.6.6\r\n\
        X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n";
    assert_eq!(raw_get(&app, b"/public/x", forwarded).await.status, 200);
    let seen = backend.last_headers();
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["x-real-ip"], "6.6.6.6");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "shop.example");

    // A trusted proxy that sent none of them gets them filled in.
    raw_get(&app, b"/public/x", b"").await;
    let seen = backend.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "a.test");
}

#[tokio::test]
async fn unusable_request_ids_are_replaced_and_usable_ones_kept() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    let too_long = format!("X-Request-Id: {}\r\n", "a".repeat(129));
    let at_limit_id = "b".repeat(128);
    let at_limit = format!("X-Request-Id: {at_limit_id}\r\n");
    let bad: [&[u8]; 5] = [
        b"X-Request-Id: caf\xc3\xa9-\xff\r\n",
        too_long.as_bytes(),
        b"X-Request-Id: two words\r\n",
        b"X-Request-Id: tab\there\r\n",
        b"X-Request-Id: first\r\nX-Request-Id: second\r\n",
    ];
    for extra in bad {
        let shown = String::from_utf8_lossy(extra);
        let answer = raw_get(&app, b"/public/x", extra).await;
        assert_eq!(answer.status, 200, "{shown}");
        let returned = answer.header("x-request-id").expect("an id is returned");
        assert_eq!(returned.len(), 36, "{shown}: {returned}");
        assert!(uuid_like(returned), "{shown}: {returned}");
        let upstream: Vec<_> = backend
            .last_headers()
            .get_all("x-request-id")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        assert_eq!(upstream, [returned.as_bytes()], "{shown}");
    }
    for (extra, id) in [
        (at_limit.as_bytes(), at_limit_id.as_str()),
        (b"X-Request-Id: req-42_a.b:c/d\r\n", "req-42_a.b:c/d"),
    ] {
        let answer = raw_get(&app, b"/public/x", extra).await;
        assert_eq!(answer.header("x-request-id"), Some(id));
        assert_eq!(backend.last_headers()["x-request-id"], id);
    }
}

fn uuid_like(id: &str) -> bool {
    id.bytes().enumerate().all(|(i, b)| {
        matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
    })
}

#[tokio::test]
async fn connection_cannot_strip_the_headers_backstop_sets_or_traces_by() {
    let backend = Backend::start(Behaviour::Echo).await;
    let server = "server:\n  trusted_proxies: [127.0.0.1/32]\n";
    let app = proxy(&routes(&backend, server)).await;
    let extra = b"Connection: x-request-id, x-forwarded-for, x-real-ip, x-forwarded-proto, \
        x-forwarded-host, traceparent, host, x-drop-me\r\n\
        X-Request-Id: keep-me-1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n\
        traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
        X-Drop-Me: 1\r\n";
    let answer = raw_get(&app, b"/public/x", extra).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.header("x-request-id"), Some("keep-me-1"));
    let seen = backend.last_headers();
    assert_eq!(seen["x-request-id"], "keep-me-1");
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["x-real-ip"], "6.6.6.6");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(
        seen["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(seen["host"], "a.test");
    // Other headers named in Connection are still hop-by-hop.
    assert!(seen.get("x-drop-me").is_none());
}

/// HTTP/2 carries the path in `:path` and the host in `:authority`: same rules.
#[tokio::test]
async fn http2_paths_are_normalised_and_forwarding_headers_replaced_too() {
    let backend = Backend::start(Behaviour::Echo).await;
    let app = proxy(&routes(&backend, "")).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let h2 = |path: &str, spoof: bool| {
        let mut req = http::Request::get(format!("http://{}{path}", app.proxy_addr()));
        if spoof {
            req = req
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-host", "bank.example");
        }
        let req = req.body(http_body_util::Full::default()).unwrap();
        let client = client.clone();
        async move {
            use http_body_util::BodyExt;
            let resp = client.request(req).await.expect("the proxy answered");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let (status, _) = h2("/public/%2e%2e/internal/users", false).await;
    assert_eq!(status, 404);
    let (status, _) = h2("/public/..%2finternal/users", false).await;
    assert_eq!(status, 400);
    let (status, _) = h2("/public/a%2Fb", false).await;
    assert_eq!(status, 400);
    assert_eq!(backend.hits(), 0);

    let (status, body) = h2("/public/a/./b/../c?x=1", true).await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/public/a/c");
    assert_eq!(echo["query"], "x=1");
    let seen = backend.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], app.proxy_addr().to_string());
    assert_eq!(backend.hits(), 1);
}
