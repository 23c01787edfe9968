//! Secrets out of logs and errors: URL credentials are never printed.
//!
//! [`redact_url`] is for every log line, error or view that shows a URL that may carry a
//! password (Redis: `redis://app:PASSWORD@host:6379`). [`scrub`] removes a URL's password
//! from any other text (an error message from a client library) before it is logged.

/// `scheme://user:secret@host/rest` -> `scheme://user:***@host/rest`. With only one part
/// before the `@` (which Redis treats as a password when there is no user), that whole part is
/// hidden: `redis://secret@host` -> `redis://***@host`. URLs without credentials, and text that
/// is not a URL, come back unchanged.
pub fn redact_url(url: &str) -> String {
    match credentials(url) {
        Some((start, end)) => {
            let creds = &url[start..end];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[end..]),
                None => format!("{}***{}", &url[..start], &url[end..]),
            }
        }
        None => url.to_owned(),
    }
}

/// `text` with the secret part of `url` (its password, as written and percent-decoded, or the
/// lone user part) replaced by `***`, and `url` itself by its redacted form.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(secret) = secret(url) {
        let decoded = percent_decode(secret);
        for s in [secret, decoded.as_str()] {
            if !s.is_empty() && s != "***" {
                out = out.replace(s, "***");
            }
        }
    }
    out
}

/// The byte range of `user:password` between `://` and the last `@`.
fn credentials(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let at = url.rfind('@')?;
    (at >= start).then_some((start, at))
}

fn secret(url: &str) -> Option<&str> {
    let (start, end) = credentials(url)?;
    let creds = &url[start..end];
    Some(
        creds
            .split_once(':')
            .map_or(creds, |(_, password)| password),
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://app:s3cret@10.0.0.1:6379/0"),
            "redis://app:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("rediss://s3cret@h:1"), "rediss://***@h:1");
        assert_eq!(
            redact_url("redis://app:p@ss:w@rd@h:1"),
            "redis://app:***@h:1"
        );
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("not a url @ all"), "not a url @ all");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn scrubs_the_password_from_any_text() {
        let url = "redis://app:p%40ss@h:1";
        assert_eq!(
            scrub("cannot reach redis://app:p%40ss@h:1: auth p@ss failed", url),
            "cannot reach redis://app:***@h:1: auth *** failed"
        );
        assert_eq!(scrub("refused", "redis://h:1"), "refused");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
