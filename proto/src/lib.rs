//! Spool Live's public vocabulary: names, wire types, signing and the pure mapping from a
//! CMS webhook to a content event. Nothing in this crate does I/O, so all of it is tested
//! directly (unit and property tests next to the code).
#![forbid(unsafe_code)]

pub mod event;
pub mod mapping;
pub mod names;
pub mod outcome;
pub mod revalidate;
pub mod signing;
pub mod site;

pub use event::{Audience, Event, EventType, Item, WebhookPayload};
pub use names::{CollectionName, InvalidName, SiteId};
pub use site::Site;

/// The OpenAPI document of the HTTP API of all three services.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

#[cfg(test)]
mod fuzz;
