//! Integration tests: the server runs in-process on free ports and the tests
//! speak XMPP to it over real sockets. One binary keeps link time low.

mod avatar;
mod blocking;
mod bosh;
mod c2s;
mod caches;
mod common;
mod component;
mod crash;
mod delivery;
mod im;
mod mam;
mod muc;
mod pep;
mod s2s;
mod sasl2;
mod sm;
mod ssdp;
mod storage;
mod tls;
mod upload;
mod websocket;
mod xep;
