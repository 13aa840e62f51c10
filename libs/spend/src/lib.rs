//! Spend control, pure: what a request costs ([`price`]), what a key or project may
//! spend and how fast ([`limits`]), the windows limits count in ([`window`]), and the
//! quota-lease ledger that keeps limits exact across gateway nodes without a round trip
//! per request ([`ledger`]).
//!
//! Money is integer micro-dollars (µ$) throughout; prices are µ$ per million tokens.
//! Nothing here reads a clock: every function that needs the time takes it.
#![forbid(unsafe_code)]

pub mod ledger;
pub mod limits;
pub mod price;
pub mod window;

pub use ledger::{Ask, Holder, Ledger, Take};
pub use limits::{Budget, Limits, LimitsError, Period};
pub use price::{Price, TokenUsage, cost_micros, default_price, micros_to_usd, usd_to_micros};
pub use window::{Counter, Window};
