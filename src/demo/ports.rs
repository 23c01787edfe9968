//! The demo's config and where it listens: the embedded `config/demo.yaml` and `--port-base`.
//!
//! Ports are moved structurally: the YAML is read into a tree, `listen`, `admin.listen` and
//! every `upstreams.*.endpoints[*].address` are replaced, and the result is validated again
//! by the same loader as any config.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::Value;

/// `config/demo.yaml`, built into the binary so that `backstop demo` runs from any directory.
pub const CONFIG: &str = include_str!("../../config/demo.yaml");

/// The proxy listens on `--port-base` plus this.
pub const PROXY_OFFSET: u16 = 0;
/// The admin listener (status page, metrics) listens on `--port-base` plus this.
pub const ADMIN_OFFSET: u16 = 1;
/// The simulated backends listen from `--port-base` plus this upward, one port per endpoint.
pub const BACKENDS_OFFSET: u16 = 10;

/// Why the demo's config could not be read or its ports moved.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// The text is not YAML of the expected shape.
    #[error("the demo config is not valid YAML: {0}")]
    Yaml(String),
    /// The layout does not fit below port 65535.
    #[error(
        "--port-base {base} leaves no room for {needed} ports (the last would be above 65535)"
    )]
    TooHigh {
        /// The base asked for.
        base: u16,
        /// Ports the layout needs from the base.
        needed: u32,
    },
    /// The rewritten tree could not be written back as YAML.
    #[error("cannot write the demo config back: {0}")]
    Write(String),
}

/// Every listener of the demo, by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The proxy's `listen`.
    pub proxy: SocketAddr,
    /// `admin.listen`.
    pub admin: SocketAddr,
    /// One per endpoint, in [`endpoints`] order.
    pub backends: Vec<SocketAddr>,
}

impl Layout {
    /// The fixed layout from `base`: proxy `base`, admin `base + 1`, the backends from
    /// `base + 10` upward, for `endpoints` endpoints.
    pub fn from_base(base: u16, endpoints: usize) -> Result<Layout, PortsError> {
        let needed = u32::from(BACKENDS_OFFSET) + endpoints as u32;
        let at = |offset: u32| -> Result<SocketAddr, PortsError> {
            let port = u32::from(base) + offset;
            let port = u16::try_from(port).map_err(|_| PortsError::TooHigh { base, needed })?;
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        };
        Ok(Layout {
            proxy: at(PROXY_OFFSET.into())?,
            admin: at(ADMIN_OFFSET.into())?,
            backends: (0..endpoints as u32)
                .map(|i| at(u32::from(BACKENDS_OFFSET) + i))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The config text as a tree.
pub fn parse(text: &str) -> Result<Value, PortsError> {
    serde_saphyr::from_str(text).map_err(|e| PortsError::Yaml(e.to_string()))
}

/// `(upstream, address)` of every endpoint, upstreams by name, endpoints in file order.
pub fn endpoints(tree: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Some(upstreams) = tree.get("upstreams").and_then(Value::as_object) {
        for (name, upstream) in upstreams {
            let list = upstream.get("endpoints").and_then(Value::as_array);
            for endpoint in list.into_iter().flatten() {
                let address = endpoint.get("address").and_then(Value::as_str);
                found.push((name.clone(), address.unwrap_or_default().to_owned()));
            }
        }
    }
    found
}

/// `text` with its listeners and endpoint addresses replaced by `layout`, as YAML. Endpoints
/// beyond `layout.backends` keep their address.
pub fn rewrite(text: &str, layout: &Layout) -> Result<String, PortsError> {
    let mut tree = parse(text)?;
    let Some(root) = tree.as_object_mut() else {
        return Err(PortsError::Yaml("the top level is not a mapping".into()));
    };
    root.insert("listen".into(), layout.proxy.to_string().into());
    let admin = root
        .entry("admin")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(admin) = admin.as_object_mut() {
        admin.insert("listen".into(), layout.admin.to_string().into());
    }
    let mut next = layout.backends.iter();
    if let Some(upstreams) = root.get_mut("upstreams").and_then(Value::as_object_mut) {
        for upstream in upstreams.values_mut() {
            let list = upstream.get_mut("endpoints").and_then(Value::as_array_mut);
            for endpoint in list.into_iter().flatten() {
                if let (Some(endpoint), Some(address)) = (endpoint.as_object_mut(), next.next()) {
                    endpoint.insert("address".into(), address.to_string().into());
                }
            }
        }
    }
    serde_saphyr::to_string(&tree).map_err(|e| PortsError::Write(e.to_string()))
}

/// The help text's description of the layout, with the embedded config's endpoints.
pub fn describe_layout() -> String {
    let tree = parse(CONFIG).unwrap_or_default();
    let mut lines = vec![
        format!("N+{PROXY_OFFSET}: proxy"),
        format!("N+{ADMIN_OFFSET}: admin (status page, /metrics, /admin/*)"),
    ];
    for (i, (upstream, _)) in endpoints(&tree).iter().enumerate() {
        lines.push(format!(
            "N+{}: simulated {upstream} endpoint",
            usize::from(BACKENDS_OFFSET) + i
        ));
    }
    lines.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_ports_follow_the_layout_and_validate() {
        let tree = parse(CONFIG).unwrap();
        let n = endpoints(&tree).len();
        assert_eq!(n, 5, "agency-a has two endpoints, the others one");
        let layout = Layout::from_base(20000, n).unwrap();
        let text = rewrite(CONFIG, &layout).unwrap();
        let config = crate::config::load_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:20000");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:20001");
        let addresses: Vec<(String, String)> = config
            .upstreams
            .iter()
            .flat_map(|u| {
                u.endpoints
                    .iter()
                    .map(|e| (u.name.clone(), e.address.clone()))
            })
            .collect();
        let want = [
            ("agency-a", "127.0.0.1:20010"),
            ("agency-a", "127.0.0.1:20011"),
            ("agency-b", "127.0.0.1:20012"),
            ("payments", "127.0.0.1:20013"),
            ("payments-b", "127.0.0.1:20014"),
        ];
        let mut got = addresses.clone();
        got.sort();
        assert_eq!(
            got,
            want.map(|(u, a)| (u.to_owned(), a.to_owned())).to_vec()
        );
        // Everything but the addresses is as in the file.
        let original = crate::config::load_str(CONFIG).unwrap();
        assert_eq!(original.routes.len(), config.routes.len());
        assert_eq!(original.slos.len(), config.slos.len());
    }

    #[test]
    fn a_base_too_high_is_refused() {
        assert!(Layout::from_base(65530, 5).is_err());
        assert!(Layout::from_base(65521, 5).is_ok());
    }

    #[test]
    fn the_help_names_every_endpoint() {
        let help = describe_layout();
        assert!(
            help.contains("N+14: simulated payments-b endpoint"),
            "{help}"
        );
    }
}
