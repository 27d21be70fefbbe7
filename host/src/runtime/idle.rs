//! Idle instances, ready for the next request. A version keeps them per
//! application (an instance that served application A never serves B, so
//! nothing a plugin left in its globals crosses applications), drops those
//! idle longer than its `idle_ttl_ms`, and keeps at most `max_concurrency`.
//! One host-wide registry sees every version's idle instances: when the
//! engine's instance slots are all taken, the oldest idle instance of any
//! plugin is dropped to make room, so deploys and restarts do not fail for
//! want of slots that idle instances hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use super::pool::Warm;

/// How often expired instances are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

struct Parked {
    warm: Box<Warm>,
    since: Instant,
}

#[derive(Default)]
struct Idle {
    /// By the application the instance served. Looked up on every request:
    /// keyed by the name borrowed (no reference count touched), hashed with
    /// foldhash rather than SipHash (names come from the config, not from
    /// callers, so there is no flooding to resist).
    by_app: HashMap<Arc<str>, Vec<Parked>, RandomState>,
    /// Instances that have served no application yet.
    fresh: Vec<Parked>,
    count: usize,
}

impl Idle {
    fn stacks(&mut self) -> impl Iterator<Item = &mut Vec<Parked>> {
        self.by_app
            .values_mut()
            .chain(std::iter::once(&mut self.fresh))
    }
}

/// One version's idle instances.
pub struct IdlePool {
    idle: Mutex<Idle>,
    ttl: Duration,
    capacity: usize,
}

impl IdlePool {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        IdlePool {
            idle: Mutex::default(),
            ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().expect("idle pool lock")
    }

    /// An instance for a request of `app`: one that served `app` before,
    /// else one that has served nobody.
    pub fn take(&self, app: &Arc<str>) -> Option<Box<Warm>> {
        let mut idle = self.lock();
        let own = idle
            .by_app
            .get_mut(&**app)
            .and_then(Vec::pop)
            .or_else(|| idle.fresh.pop())?;
        idle.count -= 1;
        Some(own.warm)
    }

    /// Any instance, for a health check (which reads no application's data
    /// and hands the instance back where it came from).
    pub fn take_any(&self) -> Option<Box<Warm>> {
        let mut idle = self.lock();
        let parked = idle.stacks().find_map(Vec::pop)?;
        idle.count -= 1;
        Some(parked.warm)
    }

    /// Parks `warm`, idle since `since`, under the application it served,
    /// unless the pool is full (then it is dropped).
    pub fn put(&self, warm: Box<Warm>, since: Instant) {
        let mut idle = self.lock();
        if idle.count >= self.capacity {
            drop(idle);
            drop(warm);
            return;
        }
        idle.count += 1;
        let stack = match &warm.app {
            Some(app) => match idle.by_app.get_mut(&**app) {
                Some(stack) => stack,
                None => idle.by_app.entry(app.clone()).or_default(),
            },
            None => &mut idle.fresh,
        };
        stack.push(Parked { warm, since });
    }

    /// Drops every idle instance.
    pub fn clear(&self) {
        let dropped = std::mem::take(&mut *self.lock());
        drop(dropped);
    }

    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Drops the instances idle longer than the TTL.
    fn expire(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            let mut count = 0;
            for parked in idle.stacks() {
                let (keep, old): (Vec<Parked>, Vec<Parked>) = std::mem::take(parked)
                    .into_iter()
                    .partition(|p| now.duration_since(p.since) < self.ttl);
                *parked = keep;
                count += parked.len();
                expired.extend(old);
            }
            idle.by_app.retain(|_, parked| !parked.is_empty());
            idle.count = count;
        }
        drop(expired);
    }

    /// When the longest-idle instance was parked.
    fn oldest(&self) -> Option<Instant> {
        let idle = self.lock();
        idle.by_app
            .values()
            .chain(std::iter::once(&idle.fresh))
            .flat_map(|parked| parked.first())
            .map(|p| p.since)
            .min()
    }

    /// Drops the longest-idle instance; answers whether there was one.
    fn evict_oldest(&self) -> bool {
        let evicted = {
            let mut idle = self.lock();
            let Some(stack) = idle
                .stacks()
                .filter(|v| !v.is_empty())
                .min_by_key(|v| v[0].since)
            else {
                return false;
            };
            let oldest = stack.remove(0);
            idle.count -= 1;
            oldest
        };
        drop(evicted);
        true
    }
}

/// Every version's idle pool, for eviction across plugins and expiry.
pub struct Instances {
    pools: Mutex<Vec<Weak<IdlePool>>>,
    stop: Arc<AtomicBool>,
}

impl Instances {
    /// The registry, with a thread that drops expired instances.
    pub fn new() -> std::io::Result<Arc<Instances>> {
        let instances = Arc::new(Instances {
            pools: Mutex::default(),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let (weak, stop) = (Arc::downgrade(&instances), instances.stop.clone());
        std::thread::Builder::new()
            .name("ferry-idle".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SWEEP_EVERY);
                    match weak.upgrade() {
                        Some(instances) => instances.sweep(),
                        None => return,
                    }
                }
            })?;
        Ok(instances)
    }

    pub fn register(&self, pool: &Arc<IdlePool>) {
        let mut pools = self.pools.lock().expect("instances lock");
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    fn live(&self) -> Vec<Arc<IdlePool>> {
        let mut pools = self.pools.lock().expect("instances lock");
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// Frees one of the engine's instance slots by dropping the
    /// longest-idle instance of any plugin; answers whether it could.
    pub fn evict_one(&self) -> bool {
        let oldest = self
            .live()
            .into_iter()
            .filter_map(|pool| pool.oldest().map(|since| (since, pool)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, pool)) => pool.evict_oldest(),
            None => false,
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        for pool in self.live() {
            pool.expire(now);
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
