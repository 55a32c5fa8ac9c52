//! The commands: each `Ctx` method is one `lbctl` subcommand (list, get, create, update,
//! patch, delete, pool health, origin enable/disable, status), built on the API client and
//! the renderers. Name lookup and the origin flip are pure.

use std::time::{SystemTime, UNIX_EPOCH};

use lb_agent::{status::Status, store::is_id};
use serde_json::{json, Value};

use crate::{
    api::{collection_path, error_chain, object_path, Client, CtlError, Envelope, Kind},
    render::{
        id_name_map, join_host_port, render_lbs, render_monitors, render_pool_health, render_pools,
        render_status, str_field,
    },
    CrudCmd,
};

/// What every command needs: the client and the global flags.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) json: bool,
    pub(crate) account: String,
    pub(crate) zone: String,
}

impl Ctx {
    fn collection(&self, kind: Kind) -> String {
        collection_path(kind, &self.account, &self.zone)
    }

    /// An id as is; anything else is looked up by name in the list.
    fn resolve(&self, kind: Kind, key: &str) -> Result<String, CtlError> {
        if is_id(key) {
            return Ok(key.to_owned());
        }
        let items = self.client.list_all(&self.collection(kind))?;
        let found = find_object(&items, key, kind.noun()).map_err(CtlError::Input)?;
        Ok(str_field(found, "id").to_owned())
    }

    fn print_json(&self, v: &Value) -> Result<(), CtlError> {
        let text = serde_json::to_string_pretty(v).map_err(|e| CtlError::Input(error_chain(&e)))?;
        println!("{text}");
        Ok(())
    }

    fn note_messages(env: &Envelope) {
        for m in &env.messages {
            eprintln!("note: {m}");
        }
    }

    pub(crate) fn crud(&self, kind: Kind, cmd: &CrudCmd) -> Result<(), CtlError> {
        let coll = self.collection(kind);
        let noun = kind.noun();
        let (method, path, body, verb) = match cmd {
            CrudCmd::List => return self.list(kind),
            CrudCmd::Get { id } => {
                let env = self
                    .client
                    .get(&object_path(&coll, &self.resolve(kind, id)?))?;
                Self::note_messages(&env);
                return self.print_json(&env.result);
            }
            CrudCmd::Create { body } => (
                "POST",
                coll.clone(),
                Some(body.read_for(kind == Kind::Lb)?),
                "created",
            ),
            CrudCmd::Update { id, body } => (
                "PUT",
                object_path(&coll, &self.resolve(kind, id)?),
                Some(body.read_for(kind == Kind::Lb)?),
                "replaced",
            ),
            CrudCmd::Patch { id, body } => (
                "PATCH",
                object_path(&coll, &self.resolve(kind, id)?),
                Some(body.read_for(kind == Kind::Lb)?),
                "updated",
            ),
            CrudCmd::Delete { id } => (
                "DELETE",
                object_path(&coll, &self.resolve(kind, id)?),
                None,
                "deleted",
            ),
        };
        let env = self.client.call(method, &path, body.as_ref())?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        let id = str_field(&env.result, "id");
        match str_field(&env.result, "name") {
            "" => println!("{verb} {noun} {id}"),
            name => println!("{verb} {noun} {id} ({name})"),
        }
        Ok(())
    }

    fn list(&self, kind: Kind) -> Result<(), CtlError> {
        let items = self.client.list_all(&self.collection(kind))?;
        if self.json {
            return self.print_json(&Value::Array(items));
        }
        let text = match kind {
            Kind::Monitor => render_monitors(&items),
            Kind::Pool => {
                let monitors = self.client.list_all(&self.collection(Kind::Monitor))?;
                render_pools(&items, &id_name_map(&monitors))
            }
            Kind::Lb => {
                let pools = self.client.list_all(&self.collection(Kind::Pool))?;
                render_lbs(&items, &id_name_map(&pools))
            }
        };
        print!("{text}");
        Ok(())
    }

    pub(crate) fn pool_health(&self, key: &str) -> Result<(), CtlError> {
        let id = self.resolve(Kind::Pool, key)?;
        let path = format!("{}/health", object_path(&self.collection(Kind::Pool), &id));
        let env = self.client.get(&path)?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        print!("{}", render_pool_health(&env.result));
        Ok(())
    }

    pub(crate) fn origin(
        &self,
        pool_key: &str,
        origin_key: &str,
        enabled: bool,
    ) -> Result<(), CtlError> {
        let id = self.resolve(Kind::Pool, pool_key)?;
        let path = object_path(&self.collection(Kind::Pool), &id);
        let pool = self.client.get(&path)?.result;
        let pool_name = match str_field(&pool, "name") {
            "" => id.clone(),
            n => n.to_owned(),
        };
        let origins = pool
            .get("origins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (new, change) = set_origin_enabled(&origins, origin_key, enabled)
            .map_err(|e| CtlError::Input(format!("pool {pool_name}: {e}")))?;
        let word = if enabled { "enabled" } else { "disabled" };
        match change {
            OriginChange::Unchanged { label } => {
                if self.json {
                    self.print_json(&pool)?;
                } else {
                    println!("pool {pool_name}: origin {label} is already {word}; nothing changed");
                }
            }
            OriginChange::Changed { index, label } => {
                let env = self
                    .client
                    .call("PATCH", &path, Some(&json!({ "origins": new })))?;
                Self::note_messages(&env);
                if self.json {
                    self.print_json(&env.result)?;
                } else {
                    let confirmed = env
                        .result
                        .get("origins")
                        .and_then(|o| o.get(index))
                        .and_then(|o| o.get("enabled"))
                        .and_then(Value::as_bool);
                    println!(
                        "pool {pool_name}: origin {label} enabled: {} -> {}{}",
                        !enabled,
                        enabled,
                        if confirmed == Some(enabled) {
                            ""
                        } else {
                            " (the answer did not echo it; check `lbctl pools get`)"
                        }
                    );
                }
            }
        }
        Ok(())
    }

    pub(crate) fn status(&self) -> Result<(), CtlError> {
        let env = self.client.get("/lb-agent/v1/status")?;
        Self::note_messages(&env);
        if self.json {
            return self.print_json(&env.result);
        }
        let lbs = self.client.list_all(&self.collection(Kind::Lb))?;
        let pools = self.client.list_all(&self.collection(Kind::Pool))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let status: Status = serde_json::from_value(env.result)
            .map_err(|e| CtlError::input("the agent's status", &e))?;
        print!("{}", render_status(&status, &lbs, &pools, now));
        Ok(())
    }
}

/// Finds one object by id or name in a list. Errors name the candidates.
fn find_object<'a>(items: &'a [Value], key: &str, noun: &str) -> Result<&'a Value, String> {
    if let Some(o) = items.iter().find(|o| str_field(o, "id") == key) {
        return Ok(o);
    }
    let named: Vec<&Value> = items
        .iter()
        .filter(|o| str_field(o, "name") == key)
        .collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no {noun} has the id or name {key:?}")),
        many => Err(format!(
            "{} {noun}s are named {key:?} ({}); give the id",
            many.len(),
            many.iter()
                .map(|o| str_field(o, "id"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

// Origin enable/disable (pure)

/// What `set_origin_enabled` did.
#[derive(Debug, PartialEq, Eq)]
enum OriginChange {
    /// The origin at `index` (name, address) now has `enabled` = the wanted value.
    Changed { index: usize, label: String },
    /// Already in the wanted state; nothing to send.
    Unchanged { label: String },
}

/// Finds the origin named `key` (by name, then address, then `address:port`) in a pool's
/// `origins` and sets its `enabled`. Returns the new full origins list.
fn set_origin_enabled(
    origins: &[Value],
    key: &str,
    enabled: bool,
) -> Result<(Vec<Value>, OriginChange), String> {
    let by = |pred: &dyn Fn(&Value) -> bool| -> Vec<usize> {
        origins
            .iter()
            .enumerate()
            .filter(|(_, o)| pred(o))
            .map(|(i, _)| i)
            .collect()
    };
    let mut hits = by(&|o| str_field(o, "name") == key);
    if hits.is_empty() {
        hits = by(&|o| str_field(o, "address") == key);
    }
    if hits.is_empty() {
        hits = by(&|o| origin_addr(o) == key);
    }
    let index = match hits.as_slice() {
        [i] => *i,
        [] => {
            return Err(format!(
                "no origin named {key:?} or at that address; the pool has: {}",
                origins
                    .iter()
                    .map(origin_label)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        many => {
            return Err(format!(
                "{key:?} matches {} origins ({}); use the name or address:port",
                many.len(),
                many.iter()
                    .map(|&i| origin_label(&origins[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let label = origin_label(&origins[index]);
    // An origin without `enabled` is enabled (the Cloudflare default).
    let current = origins[index]
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if current == enabled {
        return Ok((origins.to_vec(), OriginChange::Unchanged { label }));
    }
    let mut new = origins.to_vec();
    if let Some(o) = new[index].as_object_mut() {
        o.insert("enabled".to_owned(), Value::Bool(enabled));
    }
    Ok((new, OriginChange::Changed { index, label }))
}

fn origin_addr(o: &Value) -> String {
    let addr = str_field(o, "address");
    match o.get("port").and_then(Value::as_u64) {
        Some(p) if p != 0 => join_host_port(addr, p),
        _ => addr.to_owned(),
    }
}

fn origin_label(o: &Value) -> String {
    let name = str_field(o, "name");
    let addr = origin_addr(o);
    if name.is_empty() || name == addr {
        addr
    } else {
        format!("{name} ({addr})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pools_config, SORRY, SPARE, WEB_B};

    #[test]
    fn objects_found_by_id_or_unique_name() {
        let pools = pools_config();
        assert_eq!(
            str_field(find_object(&pools, WEB_B, "pool").expect("id"), "name"),
            "web-b"
        );
        assert_eq!(
            str_field(find_object(&pools, "sorry", "pool").expect("name"), "id"),
            SORRY
        );
        let missing = find_object(&pools, "nope", "pool").expect_err("missing");
        assert_eq!(missing, "no pool has the id or name \"nope\"");
        let mut twice = pools.clone();
        twice.push(json!({"id": SPARE, "name": "sorry"}));
        let amb = find_object(&twice, "sorry", "pool").expect_err("ambiguous");
        assert!(amb.contains(SORRY) && amb.contains(SPARE), "{amb}");
    }

    #[test]
    fn origin_flip_changes_only_that_origin() {
        let pools = pools_config();
        let origins = pools[0]["origins"].as_array().expect("origins").clone();

        let (new, change) = set_origin_enabled(&origins, "a1", false).expect("by name");
        assert_eq!(
            change,
            OriginChange::Changed {
                index: 0,
                label: "a1 (10.0.1.1)".into()
            }
        );
        assert_eq!(new[0]["enabled"], json!(false));
        assert_eq!(new[1], origins[1], "other origins are sent unchanged");
        assert_eq!(new[0]["weight"], origins[0]["weight"]);

        let (new, change) = set_origin_enabled(&origins, "10.0.1.2", true).expect("by address");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));
        assert_eq!(new[1]["enabled"], json!(true));
        let (_, change) =
            set_origin_enabled(&origins, "10.0.1.2:8080", true).expect("by addr:port");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));

        let (new, change) = set_origin_enabled(&origins, "a2", false).expect("already off");
        assert_eq!(
            change,
            OriginChange::Unchanged {
                label: "a2 (10.0.1.2:8080)".into()
            }
        );
        assert_eq!(new, origins);

        // No `enabled` field means enabled.
        let bare = [json!({"name": "x", "address": "10.0.0.1"})];
        let (new, _) = set_origin_enabled(&bare, "x", false).expect("bare");
        assert_eq!(new[0]["enabled"], json!(false));

        let same_addr = [
            json!({"name": "p1", "address": "10.0.0.1", "port": 80}),
            json!({"name": "p2", "address": "10.0.0.1", "port": 81}),
        ];
        let err = set_origin_enabled(&same_addr, "10.0.0.1", false).expect_err("ambiguous");
        assert!(err.contains("matches 2 origins"), "{err}");
        let (_, change) = set_origin_enabled(&same_addr, "10.0.0.1:81", false).expect("port");
        assert!(matches!(change, OriginChange::Changed { index: 1, .. }));
        let err = set_origin_enabled(&same_addr, "zz", false).expect_err("missing");
        assert!(err.contains("p1 (10.0.0.1:80)"), "{err}");
    }
}
