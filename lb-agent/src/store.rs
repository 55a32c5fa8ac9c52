//! The object store: monitors, pools and load balancers as the API shows them (32-hex ids,
//! timestamps, references by id), with the TOML file's objects merged in, persisted
//! atomically to `api.state_file`. Everything here is pure except `Store::load`/`save`.
//!
//! How the file and the API share the store: an object defined in the TOML file is applied
//! when its definition there changes (including the first start, and objects added to the
//! file); a change made through the API to such an object stands until then. Objects created
//! through the API are never touched by the file. An object removed from the file is
//! removed from the store; one deleted through the API stays deleted until its definition in
//! the file changes. A file that conflicts with objects made through the API (a name they
//! already have, a removed object they use) is refused whole (`file_conflicts`).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    self, FieldError, RawConfig, RawLoadBalancer, RawMonitor, RawOriginSteering, RawPool,
};
use crate::refusal::{Reason, Refusal};
use lb_common::hash::{fnv1a64, FNV_OFFSET};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("api.state_file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("api.state_file {path} is not a state file of this agent ({message}); move it away to start from the config file alone")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Monitor,
    Pool,
    LoadBalancer,
}

impl Kind {
    pub fn singular(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Pool => "pool",
            Self::LoadBalancer => "load balancer",
        }
    }

    /// The config's list field (`pools[3].origins`), which validation errors name.
    pub fn list(self) -> &'static str {
        match self {
            Self::Monitor => "monitors",
            Self::Pool => "pools",
            Self::LoadBalancer => "load_balancers",
        }
    }

    fn key(self, name: &str) -> String {
        format!("{}:{name}", self.list())
    }
}

/// Where a stored object came from, when it came from the TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSource {
    /// Its name in the file.
    pub name: String,
    /// Digest of its definition in the file when it was last applied.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub id: String,
    pub created_on: String,
    pub modified_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    pub object: T,
}

impl<T: Serialize> Entry<T> {
    /// The object as the API shows it: its fields plus `id`, `created_on`, `modified_on`.
    pub fn to_api(&self) -> Value {
        let mut v = serde_json::to_value(&self.object).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("id".into(), Value::String(self.id.clone()));
            m.insert("created_on".into(), Value::String(self.created_on.clone()));
            m.insert(
                "modified_on".into(),
                Value::String(self.modified_on.clone()),
            );
        }
        v
    }
}

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    pub version: u32,
    pub monitors: Vec<Entry<RawMonitor>>,
    pub pools: Vec<Entry<RawPool>>,
    pub load_balancers: Vec<Entry<RawLoadBalancer>>,
    /// `kind:name` -> digest of file objects deleted through the API: they stay deleted
    /// until their definition in the file changes.
    #[serde(default)]
    pub deleted_file_objects: BTreeMap<String, String>,
}

pub use crate::notify::rfc3339;

/// A new random id: 32 lower-case hex characters, like Cloudflare's.
pub fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The id of a file object: derived from its kind and name, so that it is the same on
/// every host and after the state file is lost.
fn file_id(kind: Kind, name: &str) -> String {
    let key = kind.key(name);
    let a = fnv1a64(key.as_bytes(), FNV_OFFSET);
    let b = fnv1a64(key.as_bytes(), 0x6c62_272e_07bb_0142);
    format!("{a:016x}{b:016x}")
}

fn digest<T: Serialize>(v: &T) -> String {
    let text = serde_json::to_string(v).unwrap_or_default();
    format!("{:016x}", fnv1a64(text.as_bytes(), FNV_OFFSET))
}

/// Whether `s` has the shape of an id (32 lower-case hex characters, as `new_id` and
/// `file_id` make them).
pub fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// --- defaults filled in, so the API returns what is in force

fn normalize_monitor(m: &mut RawMonitor) {
    match config::MonitorKind::parse(&m.kind) {
        Some(config::MonitorKind::Tcp) => {
            m.method
                .get_or_insert_with(|| config::TCP_MONITOR_METHOD.into());
        }
        Some(k) if k.is_http() => {
            m.method
                .get_or_insert_with(|| config::DEFAULT_HTTP_METHOD.into());
            m.path
                .get_or_insert_with(|| config::DEFAULT_MONITOR_PATH.into());
            m.expected_codes
                .get_or_insert_with(|| config::DEFAULT_EXPECTED_CODES.into());
            m.expected_body.get_or_insert_with(String::new);
        }
        // udp_icmp, icmp_ping and smtp have no method, path or codes (validation refuses
        // them); an unknown type is refused by validation.
        _ => {}
    }
}

fn normalize_pool(p: &mut RawPool) {
    p.origin_steering.get_or_insert_with(|| RawOriginSteering {
        policy: config::DEFAULT_ORIGIN_STEERING.into(),
    });
}

fn normalize_lb(l: &mut RawLoadBalancer) {
    if l.origin_port.is_none() {
        l.origin_port = Some(l.port);
    }
    if l.fallback_pool.is_none() {
        l.fallback_pool = l.default_pools.last().cloned();
    }
    if l.session_affinity == "ip" && l.session_affinity_ttl.is_none() {
        l.session_affinity_ttl = Some(crate::config::DEFAULT_AFFINITY_TTL);
    }
}

/// The name the validated config uses for a monitor: its `name`, else its id (monitors
/// have no name in Cloudflare's API).
fn monitor_name(e: &Entry<RawMonitor>) -> String {
    if e.object.name.is_empty() {
        e.id.clone()
    } else {
        e.object.name.clone()
    }
}

/// Maps every pool reference of a load balancer through `f` (names to ids or back).
fn map_lb_pools(l: &mut RawLoadBalancer, f: &dyn Fn(&str) -> String) {
    for p in l.default_pools.iter_mut() {
        *p = f(p);
    }
    if let Some(p) = &mut l.fallback_pool {
        *p = f(p);
    }
    for list in l
        .region_pools
        .values_mut()
        .chain(l.country_pools.values_mut())
        .chain(l.pop_pools.values_mut())
    {
        for p in list.iter_mut() {
            *p = f(p);
        }
    }
    if let Some(rs) = &mut l.random_steering {
        rs.pool_weights = std::mem::take(&mut rs.pool_weights)
            .into_iter()
            .map(|(k, w)| (f(&k), w))
            .collect();
    }
}

fn lb_pool_refs(l: &RawLoadBalancer) -> impl Iterator<Item = &String> {
    l.default_pools
        .iter()
        .chain(l.fallback_pool.iter())
        .chain(l.region_pools.values().flatten())
        .chain(l.country_pools.values().flatten())
        .chain(l.pop_pools.values().flatten())
        .chain(l.random_steering.iter().flat_map(|r| r.pool_weights.keys()))
}

impl Store {
    /// Reads the state file; `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StoreError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let s: Self = serde_json::from_slice(&text).map_err(|e| StoreError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if s.version != STATE_VERSION {
            return Err(StoreError::Parse {
                path: path.to_owned(),
                message: format!("version {}, this agent writes {STATE_VERSION}", s.version),
            });
        }
        Ok(Some(s))
    }

    /// Writes atomically and durably: a temporary file in the same directory, fsync, rename,
    /// fsync of the directory. A crash leaves the old state or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut s = self.clone();
        s.version = STATE_VERSION;
        let text = serde_json::to_vec_pretty(&s).map_err(|e| io(std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    pub fn monitor(&self, id: &str) -> Option<&Entry<RawMonitor>> {
        self.monitors.iter().find(|e| e.id == id)
    }

    pub fn pool(&self, id: &str) -> Option<&Entry<RawPool>> {
        self.pools.iter().find(|e| e.id == id)
    }

    pub fn load_balancer(&self, id: &str) -> Option<&Entry<RawLoadBalancer>> {
        self.load_balancers.iter().find(|e| e.id == id)
    }

    /// Id of the pool the validated config calls `name`.
    pub fn pool_id(&self, name: &str) -> Option<&str> {
        self.pools
            .iter()
            .find(|e| e.object.name == name)
            .map(|e| e.id.as_str())
    }

    /// Id of the load balancer the validated config calls `name`.
    pub fn load_balancer_id(&self, name: &str) -> Option<&str> {
        self.load_balancers
            .iter()
            .find(|e| e.object.name == name)
            .map(|e| e.id.as_str())
    }

    /// The objects as one kind's API values, in store order.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        match kind {
            Kind::Monitor => self.monitors.iter().map(Entry::to_api).collect(),
            Kind::Pool => self.pools.iter().map(Entry::to_api).collect(),
            Kind::LoadBalancer => self.load_balancers.iter().map(Entry::to_api).collect(),
        }
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<Value> {
        match kind {
            Kind::Monitor => self.monitor(id).map(Entry::to_api),
            Kind::Pool => self.pool(id).map(Entry::to_api),
            Kind::LoadBalancer => self.load_balancer(id).map(Entry::to_api),
        }
    }

    /// Applies the file's objects whose definition changed since they were last applied
    /// (see the module docs). Returns whether the store changed.
    pub fn merge_file(&mut self, file: &RawConfig, now: &str) -> bool {
        let before = self.clone();
        // Monitors first, then pools (which name monitors), then load balancers.
        let names: Vec<String> = file.monitors.iter().map(|m| m.name.clone()).collect();
        self.retain_file_objects(Kind::Monitor, &names);
        for m in &file.monitors {
            let d = digest(m);
            let mut obj = m.clone();
            normalize_monitor(&mut obj);
            merge_one(
                &mut self.monitors,
                &mut self.deleted_file_objects,
                Kind::Monitor,
                &m.name,
                d,
                obj,
                now,
            );
        }
        let monitor_ids: HashMap<String, String> = self
            .monitors
            .iter()
            .map(|e| (monitor_name(e), e.id.clone()))
            .collect();
        let names: Vec<String> = file.pools.iter().map(|p| p.name.clone()).collect();
        self.retain_file_objects(Kind::Pool, &names);
        for p in &file.pools {
            let d = digest(p);
            let mut obj = p.clone();
            if let Some(m) = &mut obj.monitor {
                if let Some(id) = monitor_ids.get(m) {
                    m.clone_from(id);
                }
            }
            normalize_pool(&mut obj);
            merge_one(
                &mut self.pools,
                &mut self.deleted_file_objects,
                Kind::Pool,
                &p.name,
                d,
                obj,
                now,
            );
        }
        let pool_ids: HashMap<String, String> = self
            .pools
            .iter()
            .map(|e| (e.object.name.clone(), e.id.clone()))
            .collect();
        let names: Vec<String> = file.load_balancers.iter().map(|l| l.name.clone()).collect();
        self.retain_file_objects(Kind::LoadBalancer, &names);
        for l in &file.load_balancers {
            let d = digest(l);
            let mut obj = l.clone();
            normalize_lb(&mut obj);
            map_lb_pools(&mut obj, &|n| {
                pool_ids.get(n).cloned().unwrap_or_else(|| n.to_owned())
            });
            merge_one(
                &mut self.load_balancers,
                &mut self.deleted_file_objects,
                Kind::LoadBalancer,
                &l.name,
                d,
                obj,
                now,
            );
        }
        *self != before
    }

    /// Removes file objects of `kind` that the file no longer defines (and forgets the
    /// deletions of names it no longer has).
    fn retain_file_objects(&mut self, kind: Kind, names: &[String]) {
        let keep = |f: &Option<FileSource>| f.as_ref().is_none_or(|f| names.contains(&f.name));
        match kind {
            Kind::Monitor => self.monitors.retain(|e| keep(&e.file)),
            Kind::Pool => self.pools.retain(|e| keep(&e.file)),
            Kind::LoadBalancer => self.load_balancers.retain(|e| keep(&e.file)),
        }
        let prefix = format!("{}:", kind.list());
        self.deleted_file_objects.retain(|k, _| {
            k.strip_prefix(&prefix)
                .is_none_or(|n| names.iter().any(|x| x == n))
        });
    }

    /// The config the validator sees: the file's host sections (`[dataplane]`, `[agent]`,
    /// `[geo]`, `[api]`) with the store's objects, references turned from ids into names.
    /// Object `i` of a kind here is object `i` of the store.
    pub fn to_raw(&self, file: &RawConfig) -> RawConfig {
        let monitor_names: HashMap<&str, String> = self
            .monitors
            .iter()
            .map(|e| (e.id.as_str(), monitor_name(e)))
            .collect();
        let pool_names: HashMap<&str, &str> = self
            .pools
            .iter()
            .map(|e| (e.id.as_str(), e.object.name.as_str()))
            .collect();
        let mut raw = file.clone();
        raw.monitors = self
            .monitors
            .iter()
            .map(|e| {
                let mut m = e.object.clone();
                m.name = monitor_name(e);
                m
            })
            .collect();
        raw.pools = self
            .pools
            .iter()
            .map(|e| {
                let mut p = e.object.clone();
                if let Some(m) = &mut p.monitor {
                    if let Some(n) = monitor_names.get(m.as_str()) {
                        m.clone_from(n);
                    }
                }
                p
            })
            .collect();
        raw.load_balancers = self
            .load_balancers
            .iter()
            .map(|e| {
                let mut l = e.object.clone();
                map_lb_pools(&mut l, &|id| {
                    pool_names
                        .get(id)
                        .map_or_else(|| id.to_owned(), |n| (*n).to_owned())
                });
                l
            })
            .collect();
        raw
    }

    /// Index of object `id` of `kind`, for naming validation errors.
    pub fn index(&self, kind: Kind, id: &str) -> Option<usize> {
        match kind {
            Kind::Monitor => self.monitors.iter().position(|e| e.id == id),
            Kind::Pool => self.pools.iter().position(|e| e.id == id),
            Kind::LoadBalancer => self.load_balancers.iter().position(|e| e.id == id),
        }
    }

    /// Display name of object `i` of `kind`, for error messages.
    pub fn label(&self, kind: Kind, i: usize) -> Option<String> {
        let (name, id) = match kind {
            Kind::Monitor => self
                .monitors
                .get(i)
                .map(|e| (e.object.name.as_str(), e.id.as_str()))?,
            Kind::Pool => self
                .pools
                .get(i)
                .map(|e| (e.object.name.as_str(), e.id.as_str()))?,
            Kind::LoadBalancer => self
                .load_balancers
                .get(i)
                .map(|e| (e.object.name.as_str(), e.id.as_str()))?,
        };
        Some(if name.is_empty() {
            format!("{} {id}", kind.singular())
        } else {
            format!("{} \"{name}\" ({id})", kind.singular())
        })
    }
}

/// `lbctl`'s word for a kind.
fn lbctl_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Monitor => "monitors",
        Kind::Pool => "pools",
        Kind::LoadBalancer => "lbs",
    }
}

/// Every pool reference of a load balancer with the field that holds it.
fn lb_pool_fields(l: &RawLoadBalancer) -> Vec<(String, &String)> {
    let mut out: Vec<(String, &String)> = l
        .default_pools
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("default_pools[{i}]"), p))
        .collect();
    out.extend(
        l.fallback_pool
            .iter()
            .map(|p| ("fallback_pool".to_owned(), p)),
    );
    for (field, map) in [
        ("region_pools", &l.region_pools),
        ("country_pools", &l.country_pools),
        ("pop_pools", &l.pop_pools),
    ] {
        for (k, list) in map {
            out.extend(
                list.iter()
                    .enumerate()
                    .map(|(i, p)| (format!("{field}.{k}[{i}]"), p)),
            );
        }
    }
    if let Some(rs) = &l.random_steering {
        out.extend(
            rs.pool_weights
                .keys()
                .map(|p| (format!("random_steering.pool_weights.{p}"), p)),
        );
    }
    out
}

/// What the merge of the file found wrong, as refusals to show the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRefusal {
    /// Messages, each naming the field and the fix.
    pub errors: Vec<String>,
    /// Whether any error involves an object made through the API (a conflict between the
    /// file and the API, as opposed to a mistake in the file alone).
    pub conflict: bool,
}

impl Store {
    /// Name and origin of entry `i` of `kind` for messages about the file: a file object by
    /// its index in the file as written (`pools[2] "web"`), an API object by name and id.
    /// `None` if there is no such entry; the bool says whether it was made through the API.
    /// Without `with_name`, a file object is its index alone (before a field: `pools[2].x`).
    fn file_label(
        &self,
        file: &RawConfig,
        kind: Kind,
        i: usize,
        with_name: bool,
    ) -> Option<(String, bool)> {
        let (name, id, src) = match kind {
            Kind::Monitor => self
                .monitors
                .get(i)
                .map(|e| (monitor_name(e), e.id.as_str(), e.file.as_ref()))?,
            Kind::Pool => self
                .pools
                .get(i)
                .map(|e| (e.object.name.clone(), e.id.as_str(), e.file.as_ref()))?,
            Kind::LoadBalancer => self
                .load_balancers
                .get(i)
                .map(|e| (e.object.name.clone(), e.id.as_str(), e.file.as_ref()))?,
        };
        Some(match src {
            Some(f) => {
                let names: Vec<&String> = match kind {
                    Kind::Monitor => file.monitors.iter().map(|m| &m.name).collect(),
                    Kind::Pool => file.pools.iter().map(|p| &p.name).collect(),
                    Kind::LoadBalancer => file.load_balancers.iter().map(|l| &l.name).collect(),
                };
                match names.iter().position(|n| **n == f.name) {
                    Some(j) if with_name => (format!("{}[{j}] \"{}\"", kind.list(), f.name), false),
                    Some(j) => (format!("{}[{j}]", kind.list()), false),
                    None => (
                        format!("{} \"{}\" of the file", kind.singular(), f.name),
                        false,
                    ),
                }
            }
            None => (
                format!(
                    "{} \"{name}\" (id {id}, made through the API)",
                    kind.singular()
                ),
                true,
            ),
        })
    }

    /// File changes that conflict with the store, found by comparing `self` (before the
    /// merge) with `merged` (after it): a file object named like an object made through the
    /// API, and objects that refer (by id) to a file object the file no longer defines.
    /// Each message names the file's object by its name and the other object by name and
    /// origin, and says how to resolve it.
    pub fn file_conflicts(&self, merged: &Self, file: &RawConfig) -> FileRefusal {
        let mut out = FileRefusal::default();
        // Same name as an API object of the same kind.
        let clash = |kind: Kind, names: Vec<(String, &str, bool)>, out: &mut FileRefusal| {
            for (i, (name, _, from_file)) in names.iter().enumerate() {
                if !from_file || name.is_empty() {
                    continue;
                }
                for (j, (other, other_id, other_from_file)) in names.iter().enumerate() {
                    if i == j || *other_from_file || other != name {
                        continue;
                    }
                    let (label, _) = merged
                        .file_label(file, kind, i, true)
                        .unwrap_or_else(|| (format!("{} \"{name}\"", kind.singular()), false));
                    out.errors.push(format!(
                        "{label} in the file: a {k} named \"{name}\" (id {other_id}) was made through the API, and names must be unique; rename the {k} in the file, or rename or delete the API's (`lbctl {c} patch {other_id}` / `lbctl {c} delete {other_id}`)",
                        k = kind.singular(),
                        c = lbctl_kind(kind),
                    ));
                    out.conflict = true;
                }
            }
        };
        clash(
            Kind::Monitor,
            merged
                .monitors
                .iter()
                .map(|e| (monitor_name(e), e.id.as_str(), e.file.is_some()))
                .collect(),
            &mut out,
        );
        clash(
            Kind::Pool,
            merged
                .pools
                .iter()
                .map(|e| (e.object.name.clone(), e.id.as_str(), e.file.is_some()))
                .collect(),
            &mut out,
        );
        clash(
            Kind::LoadBalancer,
            merged
                .load_balancers
                .iter()
                .map(|e| (e.object.name.clone(), e.id.as_str(), e.file.is_some()))
                .collect(),
            &mut out,
        );

        // References to objects the merge removed (they were file objects).
        let removed = |kind: Kind, r: &str| -> Option<String> {
            let gone = match kind {
                Kind::Monitor => merged.monitor(r).is_none(),
                _ => merged.pool(r).is_none(),
            };
            if !gone {
                return None;
            }
            match kind {
                Kind::Monitor => self.monitor(r).map(monitor_name),
                _ => self.pool(r).map(|e| e.object.name.clone()),
            }
        };
        // Whether the file's own definition of a file object refers to `name` (if not, the
        // reference came from a change made through the API, which stands over the file).
        let file_refers = |kind: Kind, i: usize, name: &str| -> bool {
            match kind {
                Kind::Pool => merged.pools[i].file.as_ref().is_some_and(|f| {
                    file.pools
                        .iter()
                        .any(|p| p.name == f.name && p.monitor.as_deref() == Some(name))
                }),
                Kind::LoadBalancer => merged.load_balancers[i].file.as_ref().is_some_and(|f| {
                    file.load_balancers
                        .iter()
                        .any(|l| l.name == f.name && lb_pool_refs(l).any(|r| r == name))
                }),
                Kind::Monitor => false,
            }
        };
        let mut missing = |kind: Kind, i: usize, fields: &str, target: Kind, name: &str| {
            let Some((label, api)) = merged.file_label(file, kind, i, false) else {
                return;
            };
            let by_api = !api && !file_refers(kind, i, name);
            let id = match kind {
                Kind::Monitor => &merged.monitors[i].id,
                Kind::Pool => &merged.pools[i].id,
                Kind::LoadBalancer => &merged.load_balancers[i].id,
            };
            let t = target.singular();
            if api {
                out.errors.push(format!(
                    "{t} \"{name}\" is no longer defined in the file, but {label} uses it ({fields}); put [[{l}]] \"{name}\" back in the file, or first take it out of that {k} through the API (`lbctl {c} patch {id}`)",
                    l = target.list(),
                    k = kind.singular(),
                    c = lbctl_kind(kind),
                ));
                out.conflict = true;
            } else if by_api {
                let (label, _) = merged
                    .file_label(file, kind, i, true)
                    .unwrap_or((label, false));
                out.errors.push(format!(
                    "{t} \"{name}\" is no longer defined in the file, but {label} uses it ({fields}) since a change made through the API; put [[{l}]] \"{name}\" back in the file, or first take it out of that {k} through the API (`lbctl {c} patch {id}`)",
                    l = target.list(),
                    k = kind.singular(),
                    c = lbctl_kind(kind),
                ));
                out.conflict = true;
            } else {
                out.errors.push(format!(
                    "{label}: uses {t} \"{name}\" ({fields}), which is no longer defined in the file; define it under [[{l}]] or remove it from this {k}",
                    l = target.list(),
                    k = kind.singular(),
                ));
            }
        };
        for (i, e) in merged.pools.iter().enumerate() {
            if let Some(m) = &e.object.monitor {
                if let Some(name) = removed(Kind::Monitor, m) {
                    missing(Kind::Pool, i, "monitor", Kind::Monitor, &name);
                }
            }
        }
        for (i, e) in merged.load_balancers.iter().enumerate() {
            let mut gone: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (field, r) in lb_pool_fields(&e.object) {
                if let Some(name) = removed(Kind::Pool, r) {
                    gone.entry(name).or_default().push(field);
                }
            }
            for (name, fields) in gone {
                missing(Kind::LoadBalancer, i, &fields.join(", "), Kind::Pool, &name);
            }
        }
        out
    }

    /// The validator's messages about the merged store, rewritten for someone who edits the
    /// file: `pools[3]` (an index into the store) becomes the object's index in the file as
    /// written and its name, or, for an object made through the API, its name and id and
    /// that it was made through the API. Messages already covered by `covered` (the result
    /// of `file_conflicts`) are left out.
    pub fn file_messages(
        &self,
        file: &RawConfig,
        errors: &[FieldError],
        covered: &FileRefusal,
    ) -> FileRefusal {
        let mut out = FileRefusal::default();
        for e in errors {
            let e = &e.to_string();
            // A reference to a removed object (by id) or a duplicate name: file_conflicts
            // said it better.
            let dup_name = e.contains("is already the name of") && covered.conflict;
            let by_id = e
                .split('"')
                .nth(1)
                .is_some_and(|q| is_id(q) && e.contains(" is named \""));
            if (dup_name || by_id) && !covered.errors.is_empty() {
                continue;
            }
            let mut api = false;
            let text = relabel(e, |kind, i, before_field| {
                let (l, a) = self.file_label(file, kind, i, !before_field)?;
                api |= a;
                Some(l)
            });
            out.conflict |= api;
            out.errors.push(text);
        }
        out
    }
}

/// Replaces every `monitors[i]`, `pools[i]` and `load_balancers[i]` in `msg` that starts a
/// word (so not the `pools[0]` of `default_pools[0]`) by `f(kind, i, followed by a field)`,
/// when that is `Some`.
pub fn relabel(msg: &str, mut f: impl FnMut(Kind, usize, bool) -> Option<String>) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    'scan: while !rest.is_empty() {
        let at_word = out
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if at_word {
            for kind in [Kind::Monitor, Kind::Pool, Kind::LoadBalancer] {
                let Some(after) = rest
                    .strip_prefix(kind.list())
                    .and_then(|r| r.strip_prefix('['))
                else {
                    continue;
                };
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                let Some(tail) = after[digits..].strip_prefix(']') else {
                    continue;
                };
                let Ok(i) = after[..digits].parse::<usize>() else {
                    continue;
                };
                if let Some(l) = f(kind, i, tail.starts_with('.')) {
                    out.push_str(&l);
                    rest = tail;
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn merge_one<T>(
    list: &mut Vec<Entry<T>>,
    deleted: &mut BTreeMap<String, String>,
    kind: Kind,
    name: &str,
    digest: String,
    object: T,
    now: &str,
) {
    let key = kind.key(name);
    if let Some(e) = list
        .iter_mut()
        .find(|e| e.file.as_ref().is_some_and(|f| f.name == name))
    {
        if e.file.as_ref().is_some_and(|f| f.digest == digest) {
            return; // unchanged in the file: API changes stand
        }
        e.object = object;
        e.modified_on = now.to_owned();
        e.file = Some(FileSource {
            name: name.to_owned(),
            digest,
        });
        return;
    }
    if deleted.get(&key) == Some(&digest) {
        return; // deleted through the API, unchanged in the file since
    }
    deleted.remove(&key);
    let mut id = file_id(kind, name);
    if list.iter().any(|e| e.id == id) {
        id = new_id();
    }
    list.push(Entry {
        id,
        created_on: now.to_owned(),
        modified_on: now.to_owned(),
        file: Some(FileSource {
            name: name.to_owned(),
            digest,
        }),
        object,
    });
}

// --- API mutations (pure)

/// A change the API asks for. Bodies are JSON values as received.
#[derive(Debug, Clone)]
pub enum Op {
    Create(Kind, Value),
    /// PUT: the whole object.
    Replace(Kind, String, Value),
    /// PATCH: the given top-level fields.
    Patch(Kind, String, Value),
    Delete(Kind, String),
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Create(k, _)
            | Self::Replace(k, _, _)
            | Self::Patch(k, _, _)
            | Self::Delete(k, _) => *k,
        }
    }
}

/// What a successful mutation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub kind: Kind,
    pub id: String,
    pub deleted: bool,
}

fn bad_body(path: impl Into<String>, problem: impl Into<String>, fix: &str) -> Refusal {
    Refusal::new(Reason::BadBody, path, problem, fix)
}

/// The body as an object, without the read-only fields a client may send back (`id` must
/// match the path's, if given).
fn body_object(v: Value, id: Option<&str>) -> Result<serde_json::Map<String, Value>, Refusal> {
    let Value::Object(mut m) = v else {
        return Err(bad_body("body", "expected a JSON object", ""));
    };
    if let Some(given) = m.remove("id") {
        if let (Some(id), Some(given)) = (id, given.as_str()) {
            if given != id {
                return Err(bad_body(
                    "id",
                    format!("\"{given}\" differs from the id in the path, \"{id}\""),
                    "leave it out or send the same",
                ));
            }
        }
    }
    for ro in ["created_on", "modified_on"] {
        m.remove(ro);
    }
    Ok(m)
}

/// Deserializes with the path of the offending field in the message.
fn typed<T: serde::de::DeserializeOwned>(m: serde_json::Map<String, Value>) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(Value::Object(m)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            bad_body("body", inner, "")
        } else {
            bad_body(path, inner, "")
        }
    })
}

fn not_found(kind: Kind, id: &str) -> Refusal {
    Refusal::message(
        Reason::NotFound,
        format!("no {} has id \"{id}\"", kind.singular()),
    )
}

fn missing_ref(field: &str, kind: Kind, id: &str) -> Refusal {
    Refusal::new(
        Reason::MissingReference,
        field,
        format!("no {} has id \"{id}\"", kind.singular()),
        "create it first or use the id of an existing one",
    )
}

impl Store {
    /// Applies `op` to a copy of the store. Checks the body's shape and its references; the
    /// caller validates the resulting config as a whole (`to_raw` + `config::validate`).
    pub fn mutate(&self, op: Op, now: &str) -> Result<(Self, Done), Refusal> {
        let mut next = self.clone();
        let kind = op.kind();
        let (id, body) = match op {
            Op::Delete(_, id) => {
                next.delete(kind, &id)?;
                return Ok((
                    next,
                    Done {
                        kind,
                        id,
                        deleted: true,
                    },
                ));
            }
            Op::Create(_, v) => (new_id(), body_object(v, None)?),
            Op::Replace(_, id, v) => {
                if self.get(kind, &id).is_none() {
                    return Err(not_found(kind, &id));
                }
                let b = body_object(v, Some(&id))?;
                (id, b)
            }
            Op::Patch(_, id, v) => {
                let Some(Value::Object(mut cur)) = self.get(kind, &id) else {
                    return Err(not_found(kind, &id));
                };
                let patch = body_object(v, Some(&id))?;
                for ro in ["id", "created_on", "modified_on"] {
                    cur.remove(ro);
                }
                cur.extend(patch);
                (id, cur)
            }
        };
        match kind {
            Kind::Monitor => {
                let mut m: RawMonitor = typed(body)?;
                normalize_monitor(&mut m);
                upsert(&mut next.monitors, &id, m, now);
            }
            Kind::Pool => {
                let mut p: RawPool = typed(body)?;
                if let Some(m) = &p.monitor {
                    if self.monitor(m).is_none() {
                        return Err(missing_ref("monitor", Kind::Monitor, m));
                    }
                }
                normalize_pool(&mut p);
                upsert(&mut next.pools, &id, p, now);
            }
            Kind::LoadBalancer => {
                let mut l: RawLoadBalancer = typed(body)?;
                normalize_lb(&mut l);
                if let Some(r) = lb_pool_refs(&l).find(|r| self.pool(r).is_none()) {
                    return Err(missing_ref("pools", Kind::Pool, r));
                }
                upsert(&mut next.load_balancers, &id, l, now);
            }
        }
        Ok((
            next,
            Done {
                kind,
                id,
                deleted: false,
            },
        ))
    }

    fn delete(&mut self, kind: Kind, id: &str) -> Result<(), Refusal> {
        let in_use = |users: Vec<String>, what: &str| {
            if users.is_empty() {
                Ok(())
            } else {
                Err(Refusal::message(
                    Reason::InUse,
                    format!(
                        "{} \"{id}\" is in use by {}; {what} first",
                        kind.singular(),
                        users.join(", ")
                    ),
                ))
            }
        };
        let file = match kind {
            Kind::Monitor => {
                let i = self.index(kind, id).ok_or_else(|| not_found(kind, id))?;
                let users = self
                    .pools
                    .iter()
                    .filter(|p| p.object.monitor.as_deref() == Some(id))
                    .map(|p| format!("pool \"{}\" ({})", p.object.name, p.id))
                    .collect();
                in_use(users, "remove it from those pools")?;
                self.monitors.remove(i).file
            }
            Kind::Pool => {
                let i = self.index(kind, id).ok_or_else(|| not_found(kind, id))?;
                let users = self
                    .load_balancers
                    .iter()
                    .filter(|l| lb_pool_refs(&l.object).any(|r| r == id))
                    .map(|l| format!("load balancer \"{}\" ({})", l.object.name, l.id))
                    .collect();
                in_use(users, "remove it from those load balancers")?;
                self.pools.remove(i).file
            }
            Kind::LoadBalancer => {
                let i = self.index(kind, id).ok_or_else(|| not_found(kind, id))?;
                self.load_balancers.remove(i).file
            }
        };
        if let Some(f) = file {
            self.deleted_file_objects
                .insert(kind.key(&f.name), f.digest);
        }
        Ok(())
    }
}

fn upsert<T>(list: &mut Vec<Entry<T>>, id: &str, object: T, now: &str) {
    if let Some(e) = list.iter_mut().find(|e| e.id == id) {
        e.object = object;
        e.modified_on = now.to_owned();
    } else {
        list.push(Entry {
            id: id.to_owned(),
            created_on: now.to_owned(),
            modified_on: now.to_owned(),
            file: None,
            object,
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: &str = "2026-11-25T20:00:00.000000Z";
    const T1: &str = "2026-11-25T20:00:01.000000Z";

    const FILE: &str = r#"
[dataplane]
interfaces = ["eth0"]
snat_address = "10.0.0.1"

[[monitors]]
name = "tcp"
type = "tcp"

[[pools]]
name = "web"
monitor = "tcp"
origins = [{ name = "a", address = "10.0.2.2" }, { name = "b", address = "10.0.3.2" }]

[[pools]]
name = "spare"
origins = [{ name = "c", address = "10.0.4.2" }]

[[load_balancers]]
name = "www"
address = "10.0.0.10"
port = 80
default_pools = ["web", "spare"]
"#;

    fn file(text: &str) -> RawConfig {
        RawConfig::parse(text, Path::new("t.toml")).expect("file parses")
    }

    fn seeded() -> Store {
        let mut s = Store::default();
        assert!(
            s.merge_file(&file(FILE), T0),
            "the first merge adds the file's objects"
        );
        s
    }

    fn valid(s: &Store, text: &str) -> crate::config::Config {
        crate::config::Config::from_raw(s.to_raw(&file(text)), Path::new("t.toml"), None)
            .expect("store + file validate")
    }

    fn rejection(r: Result<(Store, Done), Refusal>) -> Refusal {
        match r {
            Err(r) => r,
            Ok((_, d)) => panic!("expected a rejection, got {d:?}"),
        }
    }

    #[test]
    fn file_objects_get_ids_from_their_names_and_refer_by_id() {
        let s = seeded();
        let web = &s.pools[0];
        assert!(is_id(&web.id) && web.id == file_id(Kind::Pool, "web"));
        assert_eq!(
            web.object.monitor.as_deref(),
            Some(s.monitors[0].id.as_str())
        );
        let lb = &s.load_balancers[0].object;
        assert_eq!(
            lb.default_pools,
            vec![s.pools[0].id.clone(), s.pools[1].id.clone()]
        );
        assert_eq!(
            lb.fallback_pool.as_deref(),
            Some(s.pools[1].id.as_str()),
            "defaults filled"
        );
        assert_eq!(
            s.monitors[0].object.method.as_deref(),
            Some("connection_established")
        );
        // Back to names for validation.
        let c = valid(&s, FILE);
        assert_eq!(c.pools[0].monitor.as_deref(), Some("tcp"));
        assert_eq!(c.load_balancers[0].default_pools, vec!["web", "spare"]);
    }

    #[test]
    fn an_unchanged_file_leaves_api_changes_standing() {
        let s = seeded();
        let id = s.pools[0].id.clone();
        let (s, _) = s
            .mutate(
                Op::Patch(Kind::Pool, id.clone(), json!({"minimum_origins": 2})),
                T1,
            )
            .expect("patch");
        let mut again = s.clone();
        assert!(
            !again.merge_file(&file(FILE), T1),
            "nothing changed in the file"
        );
        assert_eq!(again.pool(&id).map(|p| p.object.minimum_origins), Some(2));
    }

    #[test]
    fn a_changed_definition_in_the_file_wins_and_keeps_the_id() {
        let s = seeded();
        let id = s.pools[0].id.clone();
        let (mut s, _) = s
            .mutate(
                Op::Patch(Kind::Pool, id.clone(), json!({"minimum_origins": 2})),
                T1,
            )
            .expect("patch");
        let changed = FILE.replace(
            "name = \"web\"\n",
            "name = \"web\"\ndescription = \"edited\"\n",
        );
        assert!(s.merge_file(&file(&changed), T1));
        let p = s.pool(&id).expect("same id");
        assert_eq!(
            (p.object.minimum_origins, p.object.description.as_str()),
            (1, "edited")
        );
        assert_eq!((p.created_on.as_str(), p.modified_on.as_str()), (T0, T1));
    }

    #[test]
    fn objects_removed_from_the_file_go_and_api_objects_stay() {
        let s = seeded();
        let (mut s, made) = s
            .mutate(
                Op::Create(
                    Kind::Pool,
                    json!({"name": "api", "origins": [{"name": "x", "address": "10.0.5.2"}]}),
                ),
                T1,
            )
            .expect("create");
        let without_spare = FILE
            .replace("[[pools]]\nname = \"spare\"\norigins = [{ name = \"c\", address = \"10.0.4.2\" }]\n", "")
            .replace("[\"web\", \"spare\"]", "[\"web\"]");
        assert!(s.merge_file(&file(&without_spare), T1));
        let names: Vec<&str> = s.pools.iter().map(|p| p.object.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);
        assert!(s.pool(&made.id).is_some());
        valid(&s, &without_spare);
    }

    #[test]
    fn an_api_deletion_of_a_file_object_holds_until_the_file_changes_it() {
        let s = seeded();
        let lb = s.load_balancers[0].id.clone();
        let (mut s, d) = s
            .mutate(Op::Delete(Kind::LoadBalancer, lb.clone()), T1)
            .expect("delete");
        assert!(d.deleted);
        assert!(!s.merge_file(&file(FILE), T1), "stays deleted");
        assert!(s.load_balancers.is_empty());
        let changed = FILE.replace("port = 80\n", "port = 81\n");
        assert!(
            s.merge_file(&file(&changed), T1),
            "a new definition brings it back"
        );
        assert_eq!(s.load_balancers[0].id, lb);
        assert_eq!(s.load_balancers[0].object.port, 81);
    }

    #[test]
    fn create_fills_defaults_and_patch_merges_put_replaces() {
        let s = seeded();
        let (s, d) = s
            .mutate(
                Op::Create(Kind::Monitor, json!({"type": "http", "description": "x"})),
                T0,
            )
            .expect("create");
        let m = s.get(Kind::Monitor, &d.id).expect("stored");
        assert!(is_id(&d.id));
        assert_eq!(
            (
                &m["method"],
                &m["path"],
                &m["expected_codes"],
                &m["interval"]
            ),
            (&json!("GET"), &json!("/"), &json!("200"), &json!(60))
        );
        assert_eq!(
            (&m["created_on"], &m["modified_on"]),
            (&json!(T0), &json!(T0))
        );
        let (s, _) = s
            .mutate(
                Op::Patch(Kind::Monitor, d.id.clone(), json!({"interval": 10})),
                T1,
            )
            .expect("patch");
        let m = s.get(Kind::Monitor, &d.id).expect("stored");
        assert_eq!(
            (&m["interval"], &m["description"], &m["modified_on"]),
            (&json!(10), &json!("x"), &json!(T1))
        );
        let (s, _) = s
            .mutate(
                Op::Replace(Kind::Monitor, d.id.clone(), json!({"type": "tcp"})),
                T1,
            )
            .expect("put");
        let m = s.get(Kind::Monitor, &d.id).expect("stored");
        assert_eq!(
            (&m["interval"], &m["description"], &m["created_on"]),
            (&json!(60), &json!(""), &json!(T0))
        );
    }

    #[test]
    fn bodies_are_checked_with_the_field_named() {
        let s = seeded();
        let pid = s.pools[0].id.clone();
        let r = rejection(s.mutate(Op::Create(Kind::Pool, json!([1])), T0));
        assert_eq!(r.reason, Reason::BadBody);
        let r = rejection(s.mutate(
            Op::Create(Kind::Pool, json!({"name": "x", "origins": [], "colour": 1})),
            T0,
        ));
        assert!(r.errors[0].to_string().contains("colour"), "{r:?}");
        let r = rejection(s.mutate(Op::Create(Kind::Pool, json!({"name": "x", "origins": [{"name": "a", "address": "10.0.0.2", "weight": "x"}]})), T0));
        assert!(
            r.errors[0].to_string().starts_with("origins[0].weight: "),
            "{r:?}"
        );
        let r = rejection(s.mutate(
            Op::Patch(Kind::Pool, pid.clone(), json!({"id": "0".repeat(32)})),
            T0,
        ));
        assert_eq!(r.reason, Reason::BadBody);
        assert!(
            s.mutate(
                Op::Patch(
                    Kind::Pool,
                    pid.clone(),
                    json!({"id": pid, "created_on": "x"})
                ),
                T0
            )
            .is_ok(),
            "read-only fields sent back are ignored"
        );
        let r = rejection(s.mutate(Op::Patch(Kind::Pool, "f".repeat(32), json!({})), T0));
        assert_eq!(r.reason, Reason::NotFound);
    }

    #[test]
    fn references_must_exist_and_objects_in_use_cannot_go() {
        let s = seeded();
        let r = rejection(s.mutate(Op::Create(Kind::Pool, json!({"name": "x", "monitor": "a".repeat(32), "origins": [{"name": "a", "address": "10.0.0.2"}]})), T0));
        assert_eq!(r.reason, Reason::MissingReference);
        let r = rejection(s.mutate(Op::Create(Kind::LoadBalancer, json!({"name": "y", "address": "10.0.0.11", "port": 80, "default_pools": ["b".repeat(32)]})), T0));
        assert_eq!(r.reason, Reason::MissingReference);
        let r = rejection(s.mutate(Op::Delete(Kind::Monitor, s.monitors[0].id.clone()), T0));
        assert_eq!(r.reason, Reason::InUse);
        assert!(r.errors[0].to_string().contains("\"web\""), "{r:?}");
        let r = rejection(s.mutate(Op::Delete(Kind::Pool, s.pools[1].id.clone()), T0));
        assert!(
            r.reason == Reason::InUse && r.errors[0].to_string().contains("www"),
            "{r:?}"
        );
    }

    #[test]
    fn relabel_replaces_whole_list_indexes_only() {
        let out = relabel(
            "load_balancers[1].default_pools[0]: no pool; see pools[12] and monitors[0]",
            |k, i, field| Some(format!("<{}{i}{}>", k.list(), if field { "." } else { "" })),
        );
        assert_eq!(
            out,
            "<load_balancers1.>.default_pools[0]: no pool; see <pools12> and <monitors0>"
        );
    }

    #[test]
    fn a_monitor_removed_from_the_file_that_an_api_pool_uses_is_a_conflict() {
        let s = seeded();
        let tcp = s.monitors[0].id.clone();
        let (s, made) = s
            .mutate(
                Op::Create(
                    Kind::Pool,
                    json!({"name": "api", "monitor": tcp, "origins": [{"name": "x", "address": "10.0.5.2"}]}),
                ),
                T1,
            )
            .expect("create");
        let without_tcp = FILE
            .replace("[[monitors]]\nname = \"tcp\"\ntype = \"tcp\"\n", "")
            .replace("monitor = \"tcp\"\n", "");
        let raw = file(&without_tcp);
        let mut merged = s.clone();
        merged.merge_file(&raw, T1);
        let r = s.file_conflicts(&merged, &raw);
        assert!(r.conflict, "{r:?}");
        assert_eq!(
            r.errors,
            [format!("monitor \"tcp\" is no longer defined in the file, but pool \"api\" (id {}, made through the API) uses it (monitor); put [[monitors]] \"tcp\" back in the file, or first take it out of that pool through the API (`lbctl pools patch {}`)", made.id, made.id)]
        );
        // Without the API pool, the same file merges cleanly.
        let mut alone = seeded();
        let before = alone.clone();
        alone.merge_file(&raw, T1);
        assert_eq!(before.file_conflicts(&alone, &raw), FileRefusal::default());
    }

    #[test]
    fn a_removed_pool_that_an_api_change_added_to_a_file_load_balancer_is_a_conflict() {
        let s = seeded();
        let spare = s.pools[1].id.clone();
        let lb = s.load_balancers[0].id.clone();
        // The file says default_pools = ["web", "spare"]; make it ["web"] in the file
        // and keep "spare" only through the API (as the fallback).
        let in_file = FILE.replace("[\"web\", \"spare\"]", "[\"web\"]");
        let mut s = s;
        s.merge_file(&file(&in_file), T1);
        let (s, _) = s
            .mutate(
                Op::Patch(
                    Kind::LoadBalancer,
                    lb.clone(),
                    json!({"fallback_pool": spare}),
                ),
                T1,
            )
            .expect("patch");
        let without_spare = in_file.replace(
            "[[pools]]\nname = \"spare\"\norigins = [{ name = \"c\", address = \"10.0.4.2\" }]\n",
            "",
        );
        let raw = file(&without_spare);
        let mut merged = s.clone();
        merged.merge_file(&raw, T1);
        let r = s.file_conflicts(&merged, &raw);
        assert!(r.conflict, "{r:?}");
        assert_eq!(
            r.errors,
            [format!("pool \"spare\" is no longer defined in the file, but load_balancers[0] \"www\" uses it (fallback_pool) since a change made through the API; put [[pools]] \"spare\" back in the file, or first take it out of that load balancer through the API (`lbctl lbs patch {lb}`)")]
        );
        // Where the file's own definition still names it, it is a mistake in the file.
        let stale = FILE.replace(
            "[[pools]]\nname = \"spare\"\norigins = [{ name = \"c\", address = \"10.0.4.2\" }]\n",
            "",
        );
        let s = seeded();
        let raw = file(&stale);
        let mut merged = s.clone();
        merged.merge_file(&raw, T1);
        let r = s.file_conflicts(&merged, &raw);
        assert!(!r.conflict, "{r:?}");
        assert_eq!(
            r.errors,
            ["load_balancers[0]: uses pool \"spare\" (default_pools[1], fallback_pool), which is no longer defined in the file; define it under [[pools]] or remove it from this load balancer"]
        );
    }

    /// The API shows what is in force: tcp gets its method, http(s) method, path and codes;
    /// udp_icmp, icmp_ping and smtp have none of these, so none is filled in.
    #[test]
    fn monitor_defaults_are_filled_per_type() {
        for (ty, method, path) in [
            ("tcp", Some("connection_established"), None),
            ("https", Some("GET"), Some("/")),
            ("udp_icmp", None, None),
            ("icmp_ping", None, None),
            ("smtp", None, None),
        ] {
            let (s, d) = seeded()
                .mutate(Op::Create(Kind::Monitor, json!({"type": ty})), T0)
                .expect("create");
            let m = &s
                .monitors
                .iter()
                .find(|m| m.id == d.id)
                .expect("created")
                .object;
            assert_eq!(
                (m.method.as_deref(), m.path.as_deref()),
                (method, path),
                "{ty}"
            );
            assert_eq!(m.expected_codes.is_some(), path.is_some(), "{ty}");
        }
    }

    #[test]
    fn monitors_without_a_name_are_called_by_their_id() {
        let s = seeded();
        let (s, d) = s
            .mutate(Op::Create(Kind::Monitor, json!({"type": "tcp"})), T0)
            .expect("create");
        let raw = s.to_raw(&file(FILE));
        assert_eq!(raw.monitors[1].name, d.id);
    }

    #[test]
    fn save_and_load_round_trip_atomically() {
        let dir =
            std::env::temp_dir().join(format!("lb-store-{}-{}", std::process::id(), new_id()));
        let path = dir.join("state.json");
        let s = seeded();
        assert_eq!(Store::load(&path).expect("no file is fine"), None);
        s.save(&path).expect("save");
        let back = Store::load(&path).expect("load").expect("there");
        assert_eq!(back.pools, s.pools);
        assert_eq!(back.version, STATE_VERSION);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        std::fs::write(
            &path,
            b"{\"version\": 99, \"monitors\": [], \"pools\": [], \"load_balancers\": []}",
        )
        .expect("write");
        assert!(matches!(Store::load(&path), Err(StoreError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_load_balancers_protocol_is_created_patched_replaced_and_stored() {
        let s = seeded();
        let web = s.pools[0].id.clone();
        let www = s.load_balancers[0].id.clone();
        assert_eq!(
            s.get(Kind::LoadBalancer, &www).expect("www")["protocol"],
            json!("tcp"),
            "the default is shown"
        );
        let (s, d) = s
            .mutate(
                Op::Create(
                    Kind::LoadBalancer,
                    json!({"name": "dns", "address": "10.0.0.10", "port": 53, "protocol": "udp", "default_pools": [web]}),
                ),
                T0,
            )
            .expect("create");
        let dns = d.id;
        assert_eq!(
            s.get(Kind::LoadBalancer, &dns).expect("dns")["protocol"],
            json!("udp")
        );
        let c = valid(&s, FILE);
        assert_eq!(c.load_balancers[1].protocol, crate::config::Protocol::Udp);
        // PATCH merges: the protocol stays unless sent.
        let (s, _) = s
            .mutate(
                Op::Patch(Kind::LoadBalancer, dns.clone(), json!({"description": "x"})),
                T1,
            )
            .expect("patch");
        assert_eq!(
            s.get(Kind::LoadBalancer, &dns).expect("dns")["protocol"],
            json!("udp")
        );
        let (s, _) = s
            .mutate(
                Op::Patch(
                    Kind::LoadBalancer,
                    www.clone(),
                    json!({"protocol": "udp", "port": 53}),
                ),
                T1,
            )
            .expect("patch www to udp");
        // Now www and dns are both udp 10.0.0.10:53: the config refuses it.
        let errors =
            crate::config::Config::from_raw(s.to_raw(&file(FILE)), Path::new("t.toml"), None)
                .expect_err("two udp VIPs on 10.0.0.10:53");
        assert!(errors.to_string().contains("udp 10.0.0.10:53"), "{errors}");
        // PUT replaces: a body without the protocol is tcp again.
        let (s, _) = s
            .mutate(
                Op::Replace(
                    Kind::LoadBalancer,
                    www.clone(),
                    json!({"name": "www", "address": "10.0.0.10", "port": 53, "default_pools": [web]}),
                ),
                T1,
            )
            .expect("put");
        assert_eq!(
            s.get(Kind::LoadBalancer, &www).expect("www")["protocol"],
            json!("tcp")
        );
        let c = valid(&s, FILE);
        assert_eq!(
            c.load_balancers
                .iter()
                .map(|l| l.protocol.as_str())
                .collect::<Vec<_>>(),
            ["tcp", "udp"],
            "tcp and udp on 10.0.0.10:53"
        );
        // The state file keeps it.
        let dir =
            std::env::temp_dir().join(format!("lb-store-{}-{}", std::process::id(), new_id()));
        let path = dir.join("state.json");
        s.save(&path).expect("save");
        let back = Store::load(&path).expect("load").expect("there");
        assert_eq!(back.load_balancers, s.load_balancers);
        assert_eq!(
            back.load_balancer(&dns).expect("dns").object.protocol,
            "udp"
        );
        let _ = std::fs::remove_dir_all(&dir);
        // A wrong type is refused at once; a wrong value by validation, naming the field.
        let r = rejection(s.mutate(
            Op::Patch(Kind::LoadBalancer, dns.clone(), json!({"protocol": 17})),
            T1,
        ));
        assert_eq!(r.reason, Reason::BadBody);
        assert!(r.errors[0].to_string().starts_with("protocol: "), "{r:?}");
        let (bad, _) = s
            .mutate(
                Op::Patch(Kind::LoadBalancer, dns, json!({"protocol": "sctp"})),
                T1,
            )
            .expect("a string");
        let errors = crate::config::validate(bad.to_raw(&file(FILE))).expect_err("sctp");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("load_balancers[1].protocol: unknown protocol \"sctp\""),
            "{errors:?}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let t = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(1_764_100_862_123_456);
        assert_eq!(rfc3339(t), "2025-11-25T20:01:02.123456Z");
    }
}
