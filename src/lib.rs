//! imagegate
