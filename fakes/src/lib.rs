//! Local stand-ins for the external services a gateway talks to. Each speaks the real
//! service's wire format (paths, bodies, status codes, error shapes, rate-limit answers),
//! so swapping in the real service changes only a base URL. Tests drive them through
//! their Rust handles; `moltbot-fakes` runs them as standalone servers for a local demo.

pub mod openai;
pub mod telegram;
