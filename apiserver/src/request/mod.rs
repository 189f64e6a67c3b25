//! The request: parsed once at the door (`info`), the chain of layers it passes
//! (`chain`), and its representations in and out (`negotiate`, `protobuf`, `table`).

pub mod chain;
pub mod info;
pub mod negotiate;
pub mod protobuf;
pub mod table;

pub use info::RequestInfo;
