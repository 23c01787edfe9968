//! Finds the key path of a position in a YAML document.
//!
//! serde stops at the first error and serde-saphyr reports it with a line and column but not
//! with the key path. Users think in key paths (`upstreams.payments.endpoints[0].wieght`), so on
//! a parse error we read the document a second time as a plain tree of spanned nodes and name
//! the last key at or before the error's position.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::error::Position;

/// One node of a YAML document with the spans of its keys and items.
pub(crate) enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

/// The key path of the last key or item that starts at or before `at`, or `None` when the
/// document cannot be read as a tree at all (then it is not valid YAML).
pub(crate) fn path_at(text: &str, at: Position) -> Option<String> {
    let root: Spanned<Node> = serde_saphyr::from_str(text).ok()?;
    let mut best: Option<(Position, String)> = None;
    walk(&root.value, String::new(), at, &mut best);
    best.map(|(_, path)| path)
}

/// Every key path of the document with the position of its key (or list item), or nothing
/// when the text is not YAML.
pub(crate) fn positions(text: &str) -> std::collections::BTreeMap<String, Position> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(root) = serde_saphyr::from_str::<Spanned<Node>>(text) {
        let mut collect = |pos: Position, path: &str| {
            out.entry(path.to_owned()).or_insert(pos);
        };
        visit_all(&root.value, String::new(), &mut collect);
    }
    out
}

fn visit_all(node: &Node, prefix: String, f: &mut impl FnMut(Position, &str)) {
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                let path = if prefix.is_empty() {
                    key.value.clone()
                } else {
                    format!("{prefix}.{}", key.value)
                };
                if let Some(pos) = Position::from_location(&key.referenced) {
                    f(pos, &path);
                }
                visit_all(&value.value, path, f);
            }
        }
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                if let Some(pos) = Position::from_location(&item.referenced) {
                    f(pos, &path);
                }
                visit_all(&item.value, path, f);
            }
        }
        Node::Scalar => {}
    }
}

fn walk(node: &Node, prefix: String, at: Position, best: &mut Option<(Position, String)>) {
    let mut visit = |pos: Option<Position>, path: String, child: &Node| {
        let Some(pos) = pos else { return };
        if pos > at {
            return;
        }
        if best.as_ref().is_none_or(|(b, _)| pos >= *b) {
            *best = Some((pos, path.clone()));
        }
        walk(child, path, at, best);
    };
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                let path = if prefix.is_empty() {
                    key.value.clone()
                } else {
                    format!("{prefix}.{}", key.value)
                };
                visit(Position::from_location(&key.referenced), path, &value.value);
            }
        }
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                visit(Position::from_location(&item.referenced), path, &item.value);
            }
        }
        Node::Scalar => {}
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_at_a_position() {
        let text = "listen: x\nupstreams:\n  pay:\n    endpoints:\n      - address: a\n        wieght: 3\n";
        let at = Position { line: 6, column: 9 };
        assert_eq!(
            path_at(text, at).as_deref(),
            Some("upstreams.pay.endpoints[0].wieght")
        );
        let at = Position { line: 1, column: 9 };
        assert_eq!(path_at(text, at).as_deref(), Some("listen"));
    }
}
