//! imagegate

pub mod sim;
