//! Request paths normalised before routing, so that a route's prefix means what it says.
//!
//! A backend that resolves `/public/../internal/x` itself would otherwise serve `/internal/x`
//! through a backstop that exposes only `/public`. So, before routing:
//!
//! - dot segments (`.` and `..`, also percent-encoded as `%2e`, `.%2E`, ...) are removed as in
//!   RFC 3986 section 5.2.4, and the result is what is routed and forwarded;
//! - a `..` that would climb above the root (`/../x`) is refused (400 `bad_path`, as nginx
//!   does) rather than clamped at the root as the RFC would;
//! - a dot segment that carries a `;` (`..;/`, a Tomcat path parameter), a backslash or an
//!   encoded slash (`..\`, `..%2f`, `.%2e%5c`) is always refused: some backends split on those
//!   and would see a dot segment we did not;
//! - nothing else changes: `//` is kept (nginx merges slashes, we do not: a backend may give
//!   them meaning), other percent-encodings and the query are forwarded untouched.
//!
//! Encoded slashes (`%2F`) and backslashes (raw or `%5C`) elsewhere in a path are refused after
//! routing unless the route sets `match.allow_encoded_slashes` ([`has_encoded_slash`]).
//!
//! A path with none of `.`, `%`, `\` and `;` (nearly all of them) is returned as it is without
//! a scan per segment or an allocation.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a path is refused (all answer 400 `bad_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` would leave the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A dot segment with `;`, a backslash or an encoded slash in it.
    #[error("a dot segment is combined with ';', a backslash or an encoded slash")]
    AmbiguousDotSegment,
    /// The path contains `%2F` or a backslash and the route does not allow it.
    #[error("the path contains an encoded slash or a backslash")]
    EncodedSlash,
}

/// `path` without dot segments. Borrowed when nothing changes. Paths that do not start with
/// `/` (`*` of `OPTIONS *`) are returned as they are.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || !path.bytes().any(is_special) {
        return Ok(Cow::Borrowed(path));
    }
    let mut dot_segments = false;
    for segment in path[1..].split('/') {
        match classify(segment) {
            Segment::Dot | Segment::DotDot => dot_segments = true,
            Segment::Ambiguous => return Err(PathError::AmbiguousDotSegment),
            Segment::Plain => {}
        }
    }
    if !dot_segments {
        return Ok(Cow::Borrowed(path));
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let class = classify(segment);
        match class {
            Segment::Plain => kept.push(segment),
            Segment::Dot => {}
            Segment::DotDot => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            Segment::Ambiguous => return Err(PathError::AmbiguousDotSegment),
        }
        // `/a/b/..` and `/a/.` end in a directory: `/a/`.
        if last && !matches!(class, Segment::Plain) {
            kept.push("");
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &kept {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    Ok(Cow::Owned(normalized))
}

/// Whether `path` holds `%2F`, `%5C` or a raw backslash.
pub fn has_encoded_slash(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\\'
            || (b == b'%'
                && matches!(
                    (bytes.get(i + 1), bytes.get(i + 2)),
                    (Some(b'2'), Some(b'f' | b'F')) | (Some(b'5'), Some(b'c' | b'C'))
                ))
    })
}

/// Replaces the path of `uri` by its [`normalize`]d form, keeping scheme, authority and query.
pub fn normalize_uri(uri: &mut Uri) -> Result<(), PathError> {
    let normalized = match normalize(uri.path())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = std::mem::take(uri).into_parts();
    // The new path is made of pieces of the old one, so it is always valid; stay total anyway.
    parts.path_and_query =
        Some(PathAndQuery::try_from(path_and_query).map_err(|_| PathError::AmbiguousDotSegment)?);
    *uri = Uri::from_parts(parts).map_err(|_| PathError::AmbiguousDotSegment)?;
    Ok(())
}

fn is_special(b: u8) -> bool {
    matches!(b, b'.' | b'%' | b'\\' | b';')
}

#[derive(Clone, Copy)]
enum Segment {
    Plain,
    Dot,
    DotDot,
    /// A dot segment once `;`, a backslash or an encoded slash is taken as a separator.
    Ambiguous,
}

fn classify(segment: &str) -> Segment {
    match dots(segment) {
        Some(1) => return Segment::Dot,
        Some(2) => return Segment::DotDot,
        _ => {}
    }
    if !segment.bytes().any(|b| matches!(b, b';' | b'\\' | b'%')) {
        return Segment::Plain;
    }
    let ambiguous = split_ambiguous(segment).any(|piece| matches!(dots(piece), Some(1 | 2)));
    if ambiguous {
        Segment::Ambiguous
    } else {
        Segment::Plain
    }
}

/// How many dots `segment` is made of, counting `%2e` as one; `None` if anything else is in it.
fn dots(segment: &str) -> Option<usize> {
    let mut rest = segment.as_bytes();
    let mut count = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return None,
        }
        count += 1;
        if count > 2 {
            return None;
        }
    }
    Some(count)
}

/// The pieces of `segment` between `;`, `\`, `%2F` and `%5C` (any case).
fn split_ambiguous(segment: &str) -> impl Iterator<Item = &str> {
    let bytes = segment.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut pieces = Vec::new();
    while i < bytes.len() {
        let width = match &bytes[i..] {
            [b';' | b'\\', ..] => 1,
            [b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..] => 3,
            _ => 0,
        };
        if width > 0 {
            pieces.push(&segment[start..i]);
            i += width;
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(&segment[start..]);
    pieces.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for path in [
            "/",
            "/a/b",
            "/a//b/",
            "/file.json",
            "/a/..b/c.",
            "/a%20b",
            "*",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(ok("/a/./b/../c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/public/../internal/x"), "/internal/x");
        assert_eq!(ok("/public/%2e%2e/internal"), "/internal");
        assert_eq!(ok("/public/.%2E/internal"), "/internal");
        assert_eq!(ok("/public/%2E./internal"), "/internal");
        assert_eq!(ok("/a/%2e/b"), "/a/b");
        assert_eq!(ok("//a/../b"), "//b");
        assert_eq!(ok("/a//../b"), "/a/b");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize("/../a"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/a"), Err(PathError::AboveRoot));
    }

    #[test]
    fn dot_segments_with_separators_in_disguise_are_refused() {
        for path in [
            "/a/..;/b",
            "/a/..;jsessionid=1/b",
            "/a/.;/b",
            "/a/..\\b",
            "/a/x\\..\\b",
            "/a/..%2fb",
            "/a/..%2Fb",
            "/a/%2e%2e%5cb",
            "/a/b%2f..",
            "/a/.%2e;/b",
        ] {
            assert_eq!(
                normalize(path),
                Err(PathError::AmbiguousDotSegment),
                "{path}"
            );
        }
        // `;` and encodings that make no dot segment are left alone.
        assert_eq!(ok("/a;b/c"), "/a;b/c");
        assert_eq!(ok("/a/...;/b"), "/a/...;/b");
        assert_eq!(ok("/a/%2e%2e%2e"), "/a/%2e%2e%2e");
    }

    #[test]
    fn encoded_slashes_are_found_in_any_case() {
        assert!(has_encoded_slash("/a%2Fb"));
        assert!(has_encoded_slash("/a%2fb"));
        assert!(has_encoded_slash("/a%5cb"));
        assert!(has_encoded_slash("/a\\b"));
        assert!(!has_encoded_slash("/a%252fb"));
        assert!(!has_encoded_slash("/a%2"));
        assert!(!has_encoded_slash("/a/b"));
    }

    #[test]
    fn the_uri_keeps_its_query_and_authority() {
        let mut uri: Uri = "http://h.test/a/./b/../c?x=../y".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "http://h.test/a/c?x=../y");
        let mut uri: Uri = "/a/%2e%2e/b".parse().unwrap();
        normalize_uri(&mut uri).unwrap();
        assert_eq!(uri, "/b");
    }
}
