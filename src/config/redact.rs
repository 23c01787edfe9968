//! Keeping secrets and huge values out of what backstop prints about a config.
//!
//! Every line about a config problem (`backstop validate`, the reload-rejected log line, the
//! 422 body of `POST /admin/reload`) goes through [`super::ConfigIssue`]'s `Display`, which
//! applies [`redact_urls`] and [`shorten_echoes`]; the admin views use [`redact_url`].

use std::borrow::Cow;

/// Longest echoed value, in characters, before it is cut.
pub const MAX_ECHO: usize = 120;
/// Longest message, in bytes, whatever it holds.
const MAX_MESSAGE: usize = 1000;

pub use crate::redact::redact_url;

/// Replaces the credentials of every URL in `text` (`scheme://userinfo@host`) by `***`,
/// keeping a user name given before a `:`.
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, or anything that ends a token.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '\\') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                match authority[..at].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Cuts every quoted value (`"..."`, as `{:?}` prints it, or `` `...` ``) longer than
/// [`MAX_ECHO`] characters to its start followed by `..." (N bytes)`, and the whole text to
/// [`MAX_MESSAGE`] bytes, so a 50 MB scalar is never echoed whole.
pub fn shorten_echoes(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_ECHO {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        let close = closing_quote(body, quote);
        let inner = &body[..close.unwrap_or(body.len())];
        match inner.char_indices().nth(MAX_ECHO) {
            Some((cut, _)) => {
                out.push_str(&inner[..cut]);
                out.push_str("...");
                out.push(quote);
                out.push_str(&format!(" ({} bytes)", inner.len()));
            }
            None => {
                out.push_str(inner);
                if close.is_some() {
                    out.push(quote);
                }
            }
        }
        rest = match close {
            Some(c) => &body[c + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    if out.len() > MAX_MESSAGE {
        let total = out.len();
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("... ({total} bytes)"));
    }
    Cow::Owned(out)
}

/// Index in `body` of the quote closing a value opened by `quote` (backslash escapes skipped
/// inside `"`).
fn closing_quote(body: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quote == '"' => escaped = true,
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_credentials() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.1:6379"),
            "redis://:***@10.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://app:s3cret@h:1/0"),
            "redis://app:***@h:1/0"
        );
        assert_eq!(redact_url("rediss://tok3n@h:1"), "rediss://***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_urls(r#"invalid url "redis://u:p@w@h:x/0" and http://a:b@c/d"#),
            r#"invalid url "redis://u:***@h:x/0" and http://a:***@c/d"#
        );
        assert_eq!(redact_urls("no url @ all"), "no url @ all");
    }

    #[test]
    fn shortens_long_quoted_values_only() {
        let short = r#"invalid duration "soon": use a number"#;
        assert_eq!(shorten_echoes(short), short);
        let long = format!(
            r#"invalid listen address "{}": expected ip:port"#,
            "a".repeat(5000)
        );
        let cut = shorten_echoes(&long);
        assert_eq!(
            cut,
            format!(
                r#"invalid listen address "{}..." (5000 bytes): expected ip:port"#,
                "a".repeat(MAX_ECHO)
            )
        );
        let escaped = format!(r#"x "{}\"{}" y"#, "b".repeat(10), "c".repeat(200));
        assert!(
            shorten_echoes(&escaped).ends_with(" (212 bytes) y"),
            "{}",
            shorten_echoes(&escaped)
        );
        let unquoted = "z".repeat(50_000);
        assert!(shorten_echoes(&unquoted).len() < MAX_MESSAGE + 30);
        let multibyte = format!("\"{}\"", "é".repeat(300));
        assert!(shorten_echoes(&multibyte).contains("(600 bytes)"));
    }
}
