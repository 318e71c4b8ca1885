//! Integration tests: one binary, a simulator and a gateway per test on ephemeral ports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support helpers fail loudly; allow-unwrap-in-tests covers only #[test] fns"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "tests run gateways, simulators and clients as background tasks of the test"
)]

mod binary;
mod boundaries;
mod budgets;
mod capabilities;
mod cluster;
mod cluster_redis;
mod console;
mod crash;
mod edge;
mod edits;
mod errors;
mod failures;
mod generate;
mod jobs;
mod keys;
mod ledger;
mod lifecycle;
mod limits;
mod metrics;
mod metrics_teams;
mod models;
mod passthrough;
mod pool;
mod quote_me;
mod routing;
mod slow_clients;
mod support;
mod webhooks;
