//! Transports. Each adapter turns its bus into validated vectors for the pipeline and
//! predictions back into messages; nothing past this module knows a bus exists.
pub mod kafka;
pub mod nats;
pub mod sink;
