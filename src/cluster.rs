//! The hot state replicas share in Redis (`[cluster] redis_url`): per-key and per-team rate
//! limits, and the version of the keys and teams (so a key disabled on one replica is refused by
//! every replica within a second). Money never depends on Redis: budgets live in PostgreSQL.
//!
//! - **Rate limits** are GCRA, one Lua script per check ([`GCRA`]), on the Redis server's clock:
//!   the same allowance as one process's (`governor`: a minute's worth at once, refilled evenly),
//!   whatever replica a request lands on.
//! - **Key changes**: a change made through the admin API of one replica increments
//!   `<namespace>:keys:version` and is published on `<namespace>:keys`; every replica listens,
//!   and also reads the version every [`VERSION_EVERY`] since a published message can be lost.
//!
//! Every key and channel starts with `[cluster] namespace` (`imagegate`).
//! - **Redis away**: a check fails within [`TIMEOUT`]; `rate_limits_when_redis_down = "open"`
//!   (the default) then applies the replica's own limits, `"closed"` refuses with 503.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::FailMode;

/// Longest wait for Redis in a request.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// How often each replica reads the version of keys and teams.
pub const VERSION_EVERY: Duration = Duration::from_millis(250);

/// GCRA over `KEYS[1]` (its theoretical arrival time, in µs of the server's clock): `ARGV[1]`
/// the emission interval (µs per cell), `ARGV[2]` the burst (cells), `ARGV[3]` the cells asked.
/// Returns `{1, remaining, reset_us}` when taken, `{0, retry_after_us, 0}` when not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * n
local window = interval * burst
if new_tat - now > window then
  return {0, math.ceil(new_tat - now - window), 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((window - (new_tat - now)) / interval), math.ceil(new_tat - now)}
";

/// Takes a slot of `KEYS[1]` (a sorted set of slot ids scored by when their lease ends, ms of
/// the server's clock) if fewer than `ARGV[1]` are held: `ARGV[2]` the lease (ms), `ARGV[3]`
/// the slot's id. Slots of a replica that died expire with their lease.
const SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
";

/// Moves the lease of the slots `ARGV[2..]` of `KEYS[1]` (still held) forward by `ARGV[1]` ms.
const RENEW_SLOTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
";

/// A concurrency slot held in Redis: given back when dropped (by the releaser task), renewed
/// while held.
pub struct Slot {
    key: String,
    id: String,
    tx: tokio::sync::mpsc::UnboundedSender<SlotEvent>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.tx.send(SlotEvent::Release(
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
        ));
    }
}

enum SlotEvent {
    Hold(String, String),
    Release(String, String),
}

/// A window taken in Redis: what is left, or how long until the cells are there.
pub enum Take {
    Taken { remaining: u32, reset: Duration },
    Wait(Duration),
}

/// Redis could not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct Down(String);

pub struct Cluster {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    gcra: redis::Script,
    slot: redis::Script,
    renew_slots: redis::Script,
    slots: tokio::sync::mpsc::UnboundedSender<SlotEvent>,
    slot_events: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<SlotEvent>>>,
    lease: Duration,
    pub fail: FailMode,
    up: AtomicBool,
    namespace: String,
}

impl Cluster {
    /// A client for `url`; connects on first use (a replica starts while Redis is away).
    pub fn new(
        url: &str,
        fail: FailMode,
        namespace: &str,
        lease: Duration,
    ) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
        let (slots, slot_events) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            client,
            conn: Mutex::new(None),
            gcra: redis::Script::new(GCRA),
            slot: redis::Script::new(SLOT),
            renew_slots: redis::Script::new(RENEW_SLOTS),
            slots,
            slot_events: Mutex::new(Some(slot_events)),
            lease,
            fail,
            up: AtomicBool::new(true),
            namespace: namespace.to_owned(),
        })
    }

    /// Calls `on_message` with each message published on `channel`, reconnecting while Redis is
    /// away (a message published meanwhile is lost: callers also poll). Never returns.
    pub async fn follow(&self, channel: &str, mut on_message: impl FnMut(String)) {
        use futures_util::StreamExt as _;
        loop {
            if let Ok(mut pubsub) = self.client.get_async_pubsub().await {
                if pubsub.subscribe(channel).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        on_message(msg.get_payload().unwrap_or_default());
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The channel circuit openings are told on.
    pub fn circuits_channel(&self) -> String {
        format!("{}:circuits", self.namespace)
    }

    /// Tells the other replicas that this one opened `model`'s circuit for `cooldown`
    /// (`<replica>|<model>|<ms>`; a replica skips its own).
    pub async fn publish_opening(&self, replica: &str, model: &str, cooldown: Duration) {
        let channel = self.circuits_channel();
        let msg = format!("{replica}|{model}|{}", cooldown.as_millis());
        let _ = self
            .call(async |c| {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&msg)
                    .query_async::<i64>(c)
                    .await
            })
            .await;
    }

    /// The channel key and team changes are announced on.
    pub fn keys_channel(&self) -> String {
        format!("{}:keys", self.namespace)
    }

    fn keys_version_key(&self) -> String {
        format!("{}:keys:version", self.namespace)
    }

    /// The client, for the key-change listener's own connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Result<ConnectionManager, Down> {
        let cached = self.conn.lock().ok().and_then(|c| c.clone());
        if let Some(c) = cached {
            return Ok(c);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connect = self.client.get_connection_manager_with_config(config);
        let c = match tokio::time::timeout(TIMEOUT * 2, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.down(e.to_string())),
            Err(_) => return Err(self.down("connect timed out".to_owned())),
        };
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    fn down(&self, e: String) -> Down {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis cannot be reached: shared rate limits fall back ([cluster] rate_limits_when_redis_down)");
        }
        Down(e)
    }

    fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis is reachable again");
        }
    }

    /// Runs `f` on the connection within [`TIMEOUT`].
    async fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, Down> {
        let mut c = self.conn().await?;
        match tokio::time::timeout(TIMEOUT, f(&mut c)).await {
            Ok(Ok(v)) => {
                self.reached();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.down(e.to_string())),
            Err(_) => Err(self.down("timed out".to_owned())),
        }
    }

    /// Takes `n` cells of the per-minute window `name` allowing `limit` a minute.
    pub async fn take(&self, name: &str, limit: u32, n: u32) -> Result<Take, Down> {
        // µs per cell, fractional: a limit past 60,000,000 a minute is under 1 µs a cell.
        let interval = format!("{:.6}", 60_000_000.0 / f64::from(limit.max(1)));
        let key = format!("{}:rl:{name}", self.namespace);
        let (taken, a, b): (i64, i64, i64) = self
            .call(async |c| {
                self.gcra
                    .key(&key)
                    .arg(&interval)
                    .arg(limit)
                    .arg(n)
                    .invoke_async(c)
                    .await
            })
            .await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(if taken == 1 {
            Take::Taken {
                remaining: u32::try_from(a).unwrap_or(0),
                reset: us(b),
            }
        } else {
            Take::Wait(us(a))
        })
    }

    /// Takes one of `limit` concurrency slots of scope `name`, or `None` when all are held.
    pub async fn take_slot(&self, name: &str, limit: u32) -> Result<Option<Slot>, Down> {
        let key = format!("{}:slots:{name}", self.namespace);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let taken: i64 = self
            .call(async |c| {
                self.slot
                    .key(&key)
                    .arg(limit)
                    .arg(lease_ms)
                    .arg(&id)
                    .invoke_async(c)
                    .await
            })
            .await?;
        if taken != 1 {
            return Ok(None);
        }
        let _ = self.slots.send(SlotEvent::Hold(key.clone(), id.clone()));
        Ok(Some(Slot {
            key,
            id,
            tx: self.slots.clone(),
        }))
    }

    /// Gives back dropped slots at once and renews held ones every third of the lease, until
    /// the process ends (run once, by `serve`).
    pub async fn keep_slots(&self) {
        let Some(mut events) = self.slot_events.lock().ok().and_then(|mut e| e.take()) else {
            return;
        };
        let mut held: std::collections::HashMap<String, std::collections::HashSet<String>> =
            std::collections::HashMap::new();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let mut renew = tokio::time::interval(self.lease / 3);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(SlotEvent::Hold(key, id)) => {
                        held.entry(key).or_default().insert(id);
                    }
                    Some(SlotEvent::Release(key, id)) => {
                        if let Some(ids) = held.get_mut(&key) {
                            ids.remove(&id);
                            if ids.is_empty() {
                                held.remove(&key);
                            }
                        }
                        // Not given back (Redis away): the slot ends with its lease.
                        let _ = self
                            .call(async |c| {
                                redis::cmd("ZREM").arg(&key).arg(&id).query_async::<i64>(c).await
                            })
                            .await;
                    }
                    None => return,
                },
                _ = renew.tick() => {
                    for (key, ids) in &held {
                        let _ = self
                            .call(async |c| {
                                let mut call = self.renew_slots.key(key);
                                call.arg(lease_ms);
                                for id in ids {
                                    call.arg(id);
                                }
                                call.invoke_async::<i64>(c).await
                            })
                            .await;
                    }
                }
            }
        }
    }

    /// Announces a change of keys or teams to every replica.
    pub async fn announce_key_change(&self) -> Result<i64, Down> {
        let (key, channel) = (self.keys_version_key(), self.keys_channel());
        let version: i64 = self
            .call(async |c| {
                redis::pipe()
                    .incr(&key, 1)
                    .publish(&channel, "changed")
                    .ignore()
                    .query_async::<(i64,)>(c)
                    .await
                    .map(|(v,)| v)
            })
            .await?;
        Ok(version)
    }

    /// The current version of keys and teams (0 before any change).
    pub async fn keys_version(&self) -> Result<i64, Down> {
        let key = self.keys_version_key();
        self.call(async |c| {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<i64>>(c)
                .await
                .map(Option::unwrap_or_default)
        })
        .await
    }

    /// A round trip (for `/readyz` and `/metrics`).
    pub async fn ping(&self) -> bool {
        self.call(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .is_ok()
    }
}
