//! PROXY protocol version 2 support for axum servers behind TCP load
//! balancers.
//!
//! A network load balancer terminates the client's TCP connection and opens
//! its own to the gateway, so the gateway's TCP peer is the balancer. With
//! PROXY protocol v2 the balancer prepends a binary header carrying the
//! original client address. [`ProxyProtocolListener`] reads that header from
//! every connection, refuses connections without a valid one, and hands the
//! rest of the stream to axum with the client address as the connection's
//! address.
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use sg_proxyproto::ProxyProtocolListener;
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route(
//!     "/",
//!     get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
//! );
//! let listener = ProxyProtocolListener::bind("0.0.0.0:8080")
//!     .await?
//!     .with_socket_addr_connect_info();
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<SocketAddr>(),
//! )
//! .await
//! # }
//! ```
//!
//! Without the adapter, extract `ConnectInfo<ClientAddr>` and serve with
//! `into_make_service_with_connect_info::<ClientAddr>()`.
//!
//! Every connection must carry the header: a listener of this type must only
//! be reachable through the balancer, otherwise anyone could claim any client
//! address.

#![forbid(unsafe_code)]

mod header;
mod listener;
mod stream;

pub use header::{
    FIXED_HEADER_LEN, HeaderError, MIN_HEADER_LIMIT, PROTOCOL_MAX_HEADER_LEN, ParseStatus,
    ProxyHeader, SIGNATURE, parse_v2,
};
pub use listener::{
    ClientAddr, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_LEN, DEFAULT_MAX_PENDING_HANDSHAKES,
    ProxyProtocolConfig, ProxyProtocolListener, SocketAddrConnectInfo,
};
pub use stream::ProxiedStream;
