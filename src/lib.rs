//! backstop: a reliability sidecar for partner and payment APIs.
//!
//! A reverse proxy that applies timeouts, circuit breakers, rate limits, safe retries and
//! failover from one YAML file, and exports the metrics SLOs are built on.
//!
//! # Layout
//! - [`config`]: YAML -> raw structs -> validated, compiled [`config::Config`]. The only way in.
//! - [`runtime`]: the immutable [`runtime::Snapshot`] behind one `ArcSwap`.
//! - [`dataplane`]: the only hyper-aware code: listener, service stack, proxy, errors.
//! - [`metrics`]: one registry we own, every metric name in [`metrics::names`].
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on a separate listener.
//! - [`app`]: binds and runs all of the above; [`demo`]: the self-contained demo.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod admin;
pub mod app;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod metrics;
pub mod policy;
pub mod redact;
pub mod runtime;
pub mod shutdown;
pub mod simulate;
pub mod slo;
pub mod telemetry;

pub use app::App;
