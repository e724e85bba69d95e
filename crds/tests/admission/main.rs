//! Admission without a cluster: the examples, and bad input refused by the schema or by
//! CEL. One test binary, so the CRDs are loaded and compiled once.

mod cel;
mod examples;
mod schema;
mod support;
