//! Lotería Nacional bet collection.
//!
//! Betting agencies upload their bets over TCP to a central server, which stores them
//! durably, waits until every agency is done, runs the draw and tells each agency its
//! own winners. This crate holds everything the two binaries (`server`, `client`)
//! share; the binaries only load their configuration, start logging and call
//! [`server::run`] or [`client::run`].
//!
//! # Layout
//!
//! Each module has one job; the arrows are "uses":
//!
//! ```text
//! bin/server ─► server ─┬─► connection ─► protocol ─► bet
//!                       ├─► storage ─────────────────► bet
//!                       └─► shutdown
//! bin/client ─► client ─┬─► connection ─► protocol ─► bet
//!                       ├─► agency_file ─────────────► bet
//!                       └─► shutdown
//! both bins  ─► config, logging
//! ```
//!
//! * [`bet`] — the domain: a [`bet::Bet`], its validation rules, the draw. Knows
//!   nothing of sockets, frames or files.
//! * [`protocol`] — the wire format of `docs/PROTOCOL.md`, pure: messages to bytes and
//!   bytes to messages, reading from any [`std::io::Read`].
//! * [`connection`] — a [`connection::Connection`] owns one `TcpStream` and moves whole
//!   frames over it, in the clear or inside TLS.
//! * [`tls`] — the lottery's certificates, both sides' TLS set-up and the identity
//!   rule (agency `k`'s certificate names `agency-k`).
//! * [`storage`] — the `Store` interface and its CSV + commit-journal implementation.
//! * [`agency_file`] — streams an agency's bets file line by line.
//! * [`server`] — thread per connection, the ledger over the store, the draw barrier.
//! * [`client`] — the agency: batch upload, single bet, echo loop.
//! * [`config`] — TOML files and environment overrides; [`logging`] — the log format;
//!   [`shutdown`] — the shutdown switch and the signal thread.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agency_file;
pub mod bet;
pub mod client;
pub mod config;
pub mod connection;
pub mod logging;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod tls;
