//! The data plane: the only code that knows hyper.
//!
//! [`server`] accepts connections, [`connection`] serves each with hyper, and every request
//! goes through the stages of the [`pipeline`], in the order written there. Errors backstop
//! produces itself are mapped to responses in [`rescue`] and nowhere else.

pub mod activity;
pub mod adaptive_cell;
pub mod balancer;
pub mod body;
pub mod breaker_cell;
pub mod bulkhead;
pub mod client;
pub mod client_body;
pub mod connection;
pub mod ejection;
pub mod forward;
pub mod health;
pub mod hedge_cell;
pub mod idempotency;
pub mod io_error;
pub mod load;
pub mod path;
pub mod pipeline;
pub mod pool;
pub mod quota;
pub mod ratelimit;
pub mod replay;
pub mod request_body;
pub mod request_checks;
pub mod rescue;
pub mod router;
pub mod server;
pub mod settle;
pub mod shared_breaker;
pub mod stall;
pub mod tasks;
pub mod upgrade;
pub mod upstream;
