//! The OpenAI API as both the router and the mock engine speak it: the routing-relevant parse
//! of request bodies ([`request`]) and errors in OpenAI's shape ([`error`]).

mod error;
mod request;

pub(crate) use error::ApiError;
pub(crate) use request::{parse, Endpoint, Input};
