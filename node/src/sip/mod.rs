//! The node's SIP runtime: sockets ([`transport`]) and the task that drives the sans-IO
//! transaction layer and routes requests to the registrar and call actors ([`endpoint`]).

pub mod endpoint;
pub mod transport;
