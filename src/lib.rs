//! The client of a grokforge node, as a library: the CLI's commands are built on it, and the
//! end-to-end tests use it too, so that what the CLI sends and reads is what is tested. The
//! wire types it speaks are the node's own (`grokforge_actors::events`, the WebSocket
//! protocol, the storage records), never a copy.

pub mod client;
