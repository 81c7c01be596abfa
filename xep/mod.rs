//! Feature modules, one per XEP. A module declares the IQ payload namespaces
//! it answers and the disco features it adds; it is enabled by name in
//! `[modules] enabled`. Core RFC 6120/6121 behaviour is not a module.

pub mod bind2;
pub mod blocking;
pub mod bosh;
pub mod caps;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod fast;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod private;
pub mod push;
pub mod register;
pub mod sasl2;
pub mod sm;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod version;

use crate::server::Server;
use async_trait::async_trait;
use jid::{BareJid, FullJid};
use minidom::Element;
use std::collections::HashMap;
use std::sync::Arc;

/// Every module name the config accepts (all on by default).
pub const ALL_MODULES: &[&str] = &[
    "disco", "ping", "version", "time", "vcard", "register", "offline", "last", "carbons", "mam",
    "blocking", "muc", "upload", "pep", "private", "extdisco", "push", "fast",
];

/// Who an IQ is addressed to, when the server answers it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A hosted domain.
    Server(String),
    /// An account's bare JID; `own` when the requester is that account.
    Account { jid: BareJid, own: bool },
}

pub struct IqRequest<'a> {
    pub from: &'a FullJid,
    pub target: &'a Target,
    pub iq: &'a Element,
    /// The single child of a get/set IQ.
    pub payload: &'a Element,
}

#[async_trait]
pub trait Module: Send + Sync {
    fn name(&self) -> &'static str;
    /// IQ payload namespaces this module answers.
    fn namespaces(&self) -> &'static [&'static str];
    /// disco#info features it adds for a target.
    fn features(&self, _target: &Target) -> Vec<&'static str> {
        Vec::new()
    }
    /// Answer an IQ (result or error), or `None` when not for this module.
    async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element>;
}

pub struct Modules {
    list: Vec<Arc<dyn Module>>,
    /// The names in `list`, for `enabled` (asked several times per routed
    /// message: no dynamic call per module).
    names: Vec<&'static str>,
    by_ns: HashMap<&'static str, Arc<dyn Module>>,
    /// XEP-0153 avatar hashes, read by presence broadcast (state of the vcard module).
    pub avatars: vcard::AvatarCache,
}

impl Modules {
    pub fn load(enabled: &[String]) -> Modules {
        let mut list: Vec<Arc<dyn Module>> = Vec::new();
        for name in enabled {
            let m: Arc<dyn Module> = match name.as_str() {
                "disco" => Arc::new(disco::Disco),
                "ping" => Arc::new(ping::Ping),
                "version" => Arc::new(version::Version),
                "time" => Arc::new(time::Time),
                "vcard" => Arc::new(vcard::VCard),
                "register" => Arc::new(register::Register),
                "offline" => Arc::new(offline::Offline),
                "last" => Arc::new(last::Last),
                "carbons" => Arc::new(carbons::Carbons),
                "mam" => Arc::new(mam::Mam),
                "blocking" => Arc::new(blocking::Blocking),
                "pep" => Arc::new(pep::Pep),
                "private" => Arc::new(private::Private),
                "extdisco" => Arc::new(extdisco::ExtDisco),
                "push" => Arc::new(push::Push),
                // A component with its own domain: routed by domain, not by IQ namespace.
                "muc" | "upload" => continue,
                // Part of SASL2 negotiation (c2s), not an IQ handler.
                "fast" => continue,
                _ => continue,
            };
            list.push(m);
        }
        let mut by_ns = HashMap::new();
        for m in &list {
            for ns in m.namespaces() {
                by_ns.insert(*ns, m.clone());
            }
        }
        Modules {
            names: list.iter().map(|m| m.name()).collect(),
            list,
            by_ns,
            avatars: Default::default(),
        }
    }

    pub async fn handle_iq(&self, server: &Arc<Server>, req: &IqRequest<'_>) -> Option<Element> {
        let m = self.by_ns.get(req.payload.ns().as_str())?;
        m.handle_iq(server, req).await
    }

    pub fn features(&self, target: &Target) -> Vec<&'static str> {
        let mut f: Vec<&'static str> = self.list.iter().flat_map(|m| m.features(target)).collect();
        // XEP-0398 needs both ends of the conversion.
        if matches!(target, Target::Account { .. }) && self.enabled("vcard") && self.enabled("pep")
        {
            f.push(vcard::CONVERSION);
        }
        f.sort_unstable();
        f.dedup();
        f
    }

    pub fn enabled(&self, name: &str) -> bool {
        self.names.contains(&name)
    }
}
