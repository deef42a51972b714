//! Helpers shared by the integration tests. Each test binary that says `mod common;` compiles
//! its own copy and uses only part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub(crate) mod engine;
pub(crate) mod nats;
pub(crate) mod tokenizer;
