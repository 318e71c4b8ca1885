//! Client keys and teams: static ones from the config file, dynamic ones from the database.
//!
//! Secrets are never stored: a key is known by the SHA-256 of its secret, and a presented key is
//! hashed and looked up by digest, so no comparison ever runs over a secret (lookups are
//! constant-time in the secret). Generated secrets are `sk-ig-` + 32 random bytes (hex), shown
//! once by the admin API.
//!
//! Lookups of dynamic keys go through a moka cache; every change through the admin API
//! (update, disable, delete) invalidates the key's entry before it answers, so a revoked key is
//! refused on its very next request. Teams are few and kept wholly in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use moka::sync::Cache;
use serde::Serialize;

use crate::config::{Budget, Config, KeySpec, Limits, TeamSpec};
use crate::store::{Store, StoreError};

/// The prefix of generated client keys.
pub const SECRET_PREFIX: &str = "sk-ig-";

/// Where a key or team is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file: change it there (the admin API refuses to).
    Config,
    /// The admin API, kept in the database.
    Admin,
}

/// A known client key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub spec: KeySpec,
    pub digest: [u8; 32],
    pub source: Source,
    pub created_at: Option<i64>,
    pub limits: Limits,
    pub budget: Budget,
    pub expires: Option<SystemTime>,
}

impl KeyRecord {
    fn new(spec: KeySpec, digest: [u8; 32], source: Source, created_at: Option<i64>) -> Self {
        Self {
            limits: spec.limits(),
            budget: spec.budget(),
            expires: spec.expiry(),
            spec,
            digest,
            source,
            created_at,
        }
    }

    /// A dynamic key read from the database.
    pub fn from_store(spec: KeySpec, digest: [u8; 32], created_at: i64) -> Self {
        Self::new(spec, digest, Source::Admin, Some(created_at))
    }

    /// Why this key may not be used now, if it may not.
    pub fn refusal(&self) -> Option<&'static str> {
        if !self.spec.enabled {
            Some("This API key has been disabled.")
        } else if self.expires.is_some_and(|t| t <= SystemTime::now()) {
            Some("This API key has expired.")
        } else {
            None
        }
    }

    /// Whether this key may request the public model `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.spec
            .models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == name))
    }
}

/// A known team.
#[derive(Debug, Clone)]
pub struct TeamRecord {
    pub spec: TeamSpec,
    pub source: Source,
    pub limits: Limits,
    pub budget: Budget,
}

impl TeamRecord {
    pub fn new(spec: TeamSpec, source: Source) -> Self {
        Self {
            limits: spec.limits(),
            budget: spec.budget(),
            spec,
            source,
        }
    }
}

/// How long an unknown `sk-ig-…` key is answered from memory. A key created meanwhile is not
/// affected: creating one forgets its digest here (and a new secret's digest was never seen).
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);

/// Every client key and team.
pub struct Registry {
    statics: HashMap<[u8; 32], Arc<KeyRecord>>,
    dynamic: Cache<[u8; 32], Arc<KeyRecord>>,
    /// Digests of `sk-ig-…` keys the database does not know, remembered briefly so a flood of
    /// unknown keys does not reach the database on every request.
    unknown: Cache<[u8; 32], ()>,
    /// Lookups that reached the database.
    store_lookups: AtomicU64,
    /// Bumped by every change: a lookup that read the database before a change does not cache
    /// what it read.
    epoch: AtomicU64,
    teams: RwLock<HashMap<String, Arc<TeamRecord>>>,
    pub store: Store,
}

impl Registry {
    /// Loads static keys and teams from `config` and dynamic teams from `store`.
    pub fn new(config: &Config, store: Store, stored_teams: Vec<TeamSpec>) -> Self {
        let statics = config
            .keys
            .iter()
            .filter_map(|k| {
                let digest = match (&k.key, &k.key_sha256) {
                    (Some(secret), _) => digest(secret),
                    (None, Some(h)) => hex::decode(h).ok()?.try_into().ok()?,
                    (None, None) => return None,
                };
                let mut spec = k.clone();
                spec.key = None;
                let record = KeyRecord::new(spec, digest, Source::Config, None);
                Some((digest, Arc::new(record)))
            })
            .collect();
        let mut teams: HashMap<String, Arc<TeamRecord>> = HashMap::new();
        for t in stored_teams {
            teams.insert(t.id.clone(), Arc::new(TeamRecord::new(t, Source::Admin)));
        }
        for t in &config.teams {
            teams.insert(
                t.id.clone(),
                Arc::new(TeamRecord::new(t.clone(), Source::Config)),
            );
        }
        Self {
            statics,
            dynamic: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNKNOWN_KEY_TTL)
                .build(),
            store_lookups: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            teams: RwLock::new(teams),
            store,
        }
    }

    /// The key whose secret is `presented`, enabled or not.
    pub async fn lookup(&self, presented: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let d = digest(presented);
        if let Some(k) = self.statics.get(&d) {
            return Ok(Some(k.clone()));
        }
        if let Some(k) = self.dynamic.get(&d) {
            return Ok(Some(k));
        }
        // Only keys with our prefix can be dynamic: anything else never touches the database.
        if !presented.starts_with(SECRET_PREFIX) || self.unknown.contains_key(&d) {
            return Ok(None);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.store_lookups.fetch_add(1, Ordering::Relaxed);
        let Some(stored) = self.store.key_by_digest(hex::encode(d)).await? else {
            if self.epoch.load(Ordering::Acquire) == epoch {
                self.unknown.insert(d, ());
            }
            return Ok(None);
        };
        let record = Arc::new(KeyRecord::from_store(stored.spec, d, stored.created_at));
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.dynamic.insert(d, record.clone());
        }
        Ok(Some(record))
    }

    /// The secret that signs key `id`'s webhooks: from the config file for a static key, from
    /// the database for a dynamic one.
    pub async fn webhook_secret(&self, id: &str) -> Option<String> {
        if let Some(k) = self.static_key(id) {
            return k.spec.webhook_secret.clone();
        }
        self.store
            .webhook_secret(id.to_owned())
            .await
            .ok()
            .flatten()
    }

    /// A static key by id.
    pub fn static_key(&self, id: &str) -> Option<Arc<KeyRecord>> {
        self.statics.values().find(|k| k.spec.id == id).cloned()
    }

    pub fn static_keys(&self) -> Vec<Arc<KeyRecord>> {
        let mut keys: Vec<_> = self.statics.values().cloned().collect();
        keys.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        keys
    }

    /// Forgets a cached dynamic key after a change was written: its next request reads the
    /// database again.
    pub fn invalidate(&self, digest: &[u8; 32]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.dynamic.invalidate(digest);
        self.unknown.invalidate(digest);
    }

    /// Forgets every cached dynamic key (another replica changed one): each is read again.
    pub fn forget_dynamic(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.dynamic.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// Replaces the teams read from the database (another replica changed one); the config
    /// file's teams stay as they are.
    pub fn replace_stored_teams(&self, stored: Vec<TeamSpec>) {
        if let Ok(mut teams) = self.teams.write() {
            teams.retain(|_, t| t.source != Source::Admin);
            for t in stored {
                if !teams.contains_key(&t.id) {
                    teams.insert(t.id.clone(), Arc::new(TeamRecord::new(t, Source::Admin)));
                }
            }
        }
    }

    /// Lookups that reached the database so far.
    pub fn store_lookups(&self) -> u64 {
        self.store_lookups.load(Ordering::Relaxed)
    }

    pub fn team(&self, id: &str) -> Option<Arc<TeamRecord>> {
        self.teams.read().ok()?.get(id).cloned()
    }

    pub fn teams(&self) -> Vec<Arc<TeamRecord>> {
        let mut teams: Vec<_> = self
            .teams
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        teams.sort_by(|a: &Arc<TeamRecord>, b| a.spec.id.cmp(&b.spec.id));
        teams
    }

    pub fn set_team(&self, record: TeamRecord) {
        if let Ok(mut teams) = self.teams.write() {
            teams.insert(record.spec.id.clone(), Arc::new(record));
        }
    }

    pub fn remove_team(&self, id: &str) {
        if let Ok(mut teams) = self.teams.write() {
            teams.remove(id);
        }
    }
}

/// SHA-256 of a key; `imagegate hash-key` prints the hex form for `key_sha256`.
pub fn digest(secret: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(secret.as_bytes()).into()
}

/// A new client key: `sk-ig-` and 32 random bytes from the OS, in hex.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// The authenticated caller, inserted into request (and response) extensions.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub id: Arc<str>,
    /// The key's settings as of this request.
    pub record: Arc<KeyRecord>,
    /// The key's team, when it has one (a team unknown to the gateway has no limits).
    pub team: Option<Arc<TeamRecord>>,
}

impl ClientKey {
    pub fn team_id(&self) -> Option<&str> {
        self.record.spec.team.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_keys_reach_the_database_once() {
        let config = Config::from_toml(
            "[upstream]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"sk-up\"\n[[keys]]\nid = \"a\"\nkey = \"sk-static-1\"\n",
            &|_| None,
        )
        .unwrap();
        let registry = Registry::new(&config, Store::open(None).unwrap(), Vec::new());
        let unknown = "sk-ig-not-a-key-anyone-made";
        for _ in 0..5 {
            assert!(registry.lookup(unknown).await.unwrap().is_none());
        }
        assert_eq!(registry.store_lookups(), 1);
        // Other prefixes never reach it; a change forgets the digest.
        assert!(registry.lookup("sk-other").await.unwrap().is_none());
        registry.invalidate(&digest(unknown));
        assert!(registry.lookup(unknown).await.unwrap().is_none());
        assert_eq!(registry.store_lookups(), 2);
    }

    #[test]
    fn secrets_are_prefixed_and_random() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
    }

    #[test]
    fn refusals() {
        let mut spec = KeySpec {
            id: "k".into(),
            ..Default::default()
        };
        let rec = |s: &KeySpec| KeyRecord::new(s.clone(), [0; 32], Source::Admin, None);
        assert_eq!(rec(&spec).refusal(), None);
        spec.expires_at = Some("2000-01-01T00:00:00Z".into());
        assert_eq!(rec(&spec).refusal(), Some("This API key has expired."));
        spec.enabled = false;
        assert_eq!(
            rec(&spec).refusal(),
            Some("This API key has been disabled.")
        );
        spec.models = Some(vec!["sparkpix".into()]);
        assert!(rec(&spec).allows("sparkpix") && !rec(&spec).allows("gpt-image-2-all"));
    }
}
